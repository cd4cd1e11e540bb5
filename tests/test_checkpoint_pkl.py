# Copyright (c) lt_d2 contributors.
"""Checkpoint surgery on detectron2 model-zoo .pkl files and URLs (no network: local files and a
test-only PathManager prefix)."""
import os
import pickle
import subprocess
import sys

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.utils.file_io import PathHandler, PathManager

from lt_d2.checkpoint import SurgeryError, load_checkpoint
from lt_d2.config import add_lt_config
from lt_d2.engine import LTTrainer

from .conftest import REPO


def _model(num_classes):
    cfg = add_lt_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, "configs", "Synthetic-LT", "faster_rcnn_tiny_ce.yaml"))
    cfg.merge_from_list(["DATASETS.TRAIN", "()", "MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes)])
    return LTTrainer.build_model(cfg)


def _write_model_zoo_pkl(path, state):
    """The format of detectron2's model zoo (e.g. model_final_280758.pkl)."""
    data = {"model": {k: v.numpy() for k, v in state.items()}, "__author__": "Detectron2 Model Zoo"}
    with open(path, "wb") as f:
        pickle.dump(data, f)


def _surgery_cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "ckpt_surgery.py"), *args],
                          capture_output=True, text=True, cwd=REPO)


def test_model_zoo_pkl_becomes_a_pth_the_trainer_loads(tmp_path):
    state = _model(12).state_dict()
    _write_model_zoo_pkl(tmp_path / "coco.pkl", state)
    ckpt = load_checkpoint(str(tmp_path / "coco.pkl"))
    assert ckpt["__author__"] == "Detectron2 Model Zoo"
    assert ckpt["model"].keys() == state.keys()
    assert all(isinstance(v, torch.Tensor) and torch.equal(v, state[k])
               for k, v in ckpt["model"].items())

    out = tmp_path / "init.pth"
    proc = _surgery_cli("--ckpt-path", str(tmp_path / "coco.pkl"), "--method", "remove",
                        "--num-classes", "5", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    written = torch.load(out, weights_only=True)
    assert set(written) == {"model"}
    dropped = {k for k in state if "cls_score" in k or ("bbox_pred" in k and state[k].shape[0] > 4)}
    assert dropped and set(written["model"]) == set(state) - dropped
    assert all(torch.equal(v, state[k]) for k, v in written["model"].items())

    fresh = _model(5)
    DetectionCheckpointer(fresh).load(str(out))
    loaded = fresh.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in written["model"].items())


class _TestHandler(PathHandler):
    """``lt-test://<name>`` -> a file of a local folder, as detectron2:// resolves to a download."""

    folder = None

    def _get_supported_prefixes(self):
        return ["lt-test://"]

    def _get_local_path(self, path, **kwargs):
        return os.path.join(self.folder, path[len("lt-test://"):])


def test_urls_resolve_through_pathmanager(tmp_path, monkeypatch):
    handler = _TestHandler()
    handler.folder = str(tmp_path)
    monkeypatch.setitem(PathManager._path_handlers, "lt-test://", handler)
    state = {"roi_heads.box_predictor.cls_score.weight": torch.randn(3, 2)}
    _write_model_zoo_pkl(tmp_path / "m.pkl", state)
    ckpt = load_checkpoint("lt-test://m.pkl")
    assert torch.equal(ckpt["model"]["roi_heads.box_predictor.cls_score.weight"],
                       state["roi_heads.box_predictor.cls_score.weight"])
    with pytest.raises(SurgeryError, match="does not exist"):
        load_checkpoint("lt-test://missing.pkl")


def test_url_input_needs_out_and_unknown_pickles_are_refused(tmp_path):
    proc = _surgery_cli("--ckpt-path", "detectron2://COCO-Detection/x/model_final.pkl",
                        "--method", "remove")
    assert proc.returncode != 0 and "is a URL" in proc.stderr and "--out" in proc.stderr
    # a pickle that would run code when loaded is refused, not executed
    marker = tmp_path / "ran"
    payload = tmp_path / "evil.pkl"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    payload.write_bytes(pickle.dumps({"model": {"w": Evil()}}))
    with pytest.raises(SurgeryError, match="not a Detectron2 checkpoint"):
        load_checkpoint(str(payload))
    assert not marker.exists()
    # a local .pth keeps its messages
    with pytest.raises(SurgeryError, match="does not exist"):
        load_checkpoint(str(tmp_path / "none.pth"))
