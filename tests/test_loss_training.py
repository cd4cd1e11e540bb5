# Copyright (c) lt_d2 contributors.
"""Every loss config trains and evaluates through tools/train_net.py; loss state survives resume."""
import glob
import os

import pytest
import torch

from .conftest import REPO, copypaste_metrics, run_train_net, tiny_opts

LOSS_CONFIGS = sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, "configs/Synthetic-LT/faster_rcnn_tiny_*.yaml"))
    if not p.endswith("faster_rcnn_tiny_ce.yaml")
)
FED_OPTS = ["MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES", "6"]


def _check(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout + proc.stderr


def test_there_is_a_synthetic_config_per_loss():
    from lt_d2.modeling.losses import CLS_LOSS_REGISTRY

    # SoftmaxCELoss is faster_rcnn_tiny_ce.yaml (and _rfs.yaml, softmax CE with repeat-factor
    # sampling); GroupSoftmaxLoss (BAGS) is a stage-two method, in
    # Synthetic-LT/decoupled/bags_faster_rcnn_tiny.yaml
    losses = [c for c in LOSS_CONFIGS if not c.endswith("_rfs.yaml")]
    assert len(losses) == len(list(CLS_LOSS_REGISTRY)) - 2


@pytest.mark.parametrize("config", LOSS_CONFIGS)
def test_loss_config_trains_and_evaluates(tiny_root, tmp_path, config):
    log = _check(run_train_net(["--config-file", config, "OUTPUT_DIR", str(tmp_path),
                                "SOLVER.MAX_ITER", "3", *tiny_opts(), *FED_OPTS], tiny_root))
    assert "APr" in copypaste_metrics(log)["bbox"]


def test_eqlv2_state_is_saved_and_restored_on_resume(tiny_root, tmp_path):
    config = "configs/Synthetic-LT/faster_rcnn_tiny_eqlv2.yaml"
    opts = ["OUTPUT_DIR", str(tmp_path), "SOLVER.CHECKPOINT_PERIOD", "3", "DATASETS.TEST", "()",
            *tiny_opts()]
    _check(run_train_net(["--config-file", config, "SOLVER.MAX_ITER", "6", *opts], tiny_root))
    key = "roi_heads.box_predictor.cls_loss.pos_grad"
    saved = torch.load(tmp_path / "model_final.pth", map_location="cpu")["model"]
    assert saved[key].sum() > 0 and key.replace("pos_grad", "pos_neg") in saved

    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg

    from lt_d2.config import add_lt_config
    from lt_d2.engine import LTTrainer

    cfg = add_lt_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, config))
    cfg.merge_from_list(opts)
    cfg.DATASETS.TRAIN = ()
    model = LTTrainer.build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).resume_or_load("", resume=True)
    loss = model.roi_heads.box_predictor.cls_loss
    for name in ("pos_grad", "neg_grad", "pos_neg"):
        assert torch.equal(getattr(loss, name), saved[f"roi_heads.box_predictor.cls_loss.{name}"])

    # a resumed run keeps accumulating from the restored state (never from zero)
    log = _check(run_train_net(["--config-file", config, "--resume", "SOLVER.MAX_ITER", "8", *opts],
                               tiny_root))
    assert "Starting training from iteration 6" in log
    final = torch.load(tmp_path / "model_final.pth", map_location="cpu")["model"]
    assert torch.all(final[key] >= saved[key]) and final[key].sum() > saved[key].sum()
