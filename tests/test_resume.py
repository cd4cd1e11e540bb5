# Copyright (c) lt_d2 contributors.
"""Exact resume: a run killed with SIGKILL right after a checkpoint and resumed with --resume ends
exactly where an uninterrupted run ends (weights, optimizer, loss statistics, logged losses); the
data stream resumes exactly; a save killed half-way never becomes the last checkpoint."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data.build import build_batch_data_loader

from lt_d2.config import add_lt_config
from lt_d2.data import ClassAwareSampler, build_training_sampler
from lt_d2.data.samplers import images_per_class
from lt_d2.data.stream import ResumableTrainLoader
from lt_d2.engine import LTTrainer

from .conftest import REPO, tiny_opts

# ---- the data stream ------------------------------------------------------------------------

# 40 images, mixed orientations, long-tailed classes
DICTS = [{"image_id": i, "width": 30 + (i * 7) % 40, "height": 30 + (i * 11) % 40,
          "annotations": [{"category_id": c} for c in {i % 5, (i * i) % 3, 4 * (i % 9 == 0)}]}
         for i in range(40)]


def _mapper(d):
    """No image: the index, the sizes, and one draw from each RNG augmentations use."""
    return {"image_id": d["image_id"], "width": d["width"], "height": d["height"],
            "draws": (random.random(), float(np.random.rand()), float(torch.rand(())))}


def _sampler(name):
    cfg = add_lt_config(get_cfg())
    cfg.SEED, cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5, 5
    cfg.DATALOADER.SAMPLER_TRAIN = name
    cfg.DATALOADER.REPEAT_THRESHOLD = 0.3
    return build_training_sampler(cfg, DICTS)


def _batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("sampler", ["TrainingSampler", "RepeatFactorTrainingSampler",
                                     "ClassAwareSampler"])
@pytest.mark.parametrize("grouping", [True, False])
def test_stream_resumes_exactly_after_any_number_of_batches(sampler, grouping):
    full = _batches(ResumableTrainLoader(DICTS, _sampler(sampler), _mapper, 3,
                                         aspect_ratio_grouping=grouping), 30)
    ids = [[d["image_id"] for d in b] for b in full]
    if grouping:  # batches hold one orientation, and both occur
        orient = [{d["width"] > d["height"] for d in b} for b in full]
        assert all(len(o) == 1 for o in orient) and {True, False} == set().union(*orient)
    waiting = 0
    for k in (1, 7, 19):
        loader = ResumableTrainLoader(DICTS, _sampler(sampler), _mapper, 3,
                                      aspect_ratio_grouping=grouping)
        state = loader.state_dict()
        loader.resume(k, state)
        waiting += len(loader._pending)
        assert _batches(loader, 30 - k) == full[k:], (sampler, k)
    assert (waiting > 0) == grouping  # images waiting in a group were mapped again, identically
    # the stream is the sampler's order: the same index stream as detectron2's own loader
    d2 = build_batch_data_loader(_Dataset(), _sampler(sampler), 3, aspect_ratio_grouping=grouping)
    assert [[d["image_id"] for d in b] for b in _batches(d2, 30)] == ids


class _Dataset(torch.utils.data.Dataset):
    def __len__(self):
        return len(DICTS)

    def __getitem__(self, i):
        return _mapper(DICTS[i])


def test_stream_is_the_same_with_workers_and_leaves_the_callers_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    plain = _batches(ResumableTrainLoader(DICTS, _sampler("ClassAwareSampler"), _mapper, 2), 12)
    assert torch.equal(torch.rand(3), expected)  # mapping drew from its own seeded RNGs
    workers = ResumableTrainLoader(DICTS, _sampler("ClassAwareSampler"), _mapper, 2, num_workers=2)
    workers.resume(5)
    assert _batches(workers, 7) == plain[5:]


def test_resume_restores_a_random_seed():
    """SEED -1: the stream's seed is drawn at start; the checkpointed one is restored."""
    cls_images = images_per_class(DICTS, 5)
    first = ResumableTrainLoader(DICTS, ClassAwareSampler(cls_images, seed=None), _mapper, 2)
    full = _batches(first, 10)
    again = ResumableTrainLoader(DICTS, ClassAwareSampler(
        cls_images, seed=first.seed + 1), _mapper, 2)
    again.resume(4, first.state_dict())
    assert _batches(again, 6) == full[4:]


def test_grouping_needs_sizes_in_the_dataset():
    dicts = [dict(DICTS[0]), {"image_id": 1, "file_name": "x.jpg", "annotations": []}]
    with pytest.raises(ValueError, match="ASPECT_RATIO_GROUPING False"):
        ResumableTrainLoader(dicts, _sampler("TrainingSampler"), _mapper, 2)


# ---- atomic checkpoints -----------------------------------------------------------------------

KILL_MID_SAVE = r"""
import os, signal, sys, torch
from lt_d2.engine.resume import AtomicCheckpointer
ckpt = AtomicCheckpointer(torch.nn.Linear(3, 2), sys.argv[1], save_to_disk=True)
ckpt.save("model_0000009")
real_save = torch.save
def dying_save(obj, f):  # half a file reaches the disk, then the process is killed
    real_save(obj, f); f.flush(); f.truncate(f.tell() // 2); f.flush(); os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
ckpt.save("model_0000019")
"""


def test_a_save_killed_half_way_leaves_last_checkpoint_on_the_complete_file(tmp_path):
    proc = subprocess.run([sys.executable, "-c", KILL_MID_SAVE, str(tmp_path)],
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([REPO] + sys.path)))
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert not (tmp_path / "model_0000019.pth").exists()
    partial = [p for p in os.listdir(tmp_path) if p.startswith(".model_0000019.pth.")]
    assert len(partial) == 1  # the temporary file holds the half-written data
    from lt_d2.engine.resume import AtomicCheckpointer

    ckpt = AtomicCheckpointer(torch.nn.Linear(3, 2), str(tmp_path), save_to_disk=True)
    assert ckpt.get_checkpoint_file().endswith("model_0000009.pth")
    assert "model" in torch.load(ckpt.get_checkpoint_file())
    ckpt.remove_partial_files()
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]


# ---- kill -9 and --resume, end to end ---------------------------------------------------------

def _train(args, datasets_root, *, kill_after=None):
    """tools/train_net.py; with ``kill_after``, SIGKILL it as soon as last_checkpoint names that
    file."""
    # one thread: the same arithmetic on any machine, and the fastest for this tiny model when
    # other processes share the cores (two contended OpenMP threads are ~20x slower here)
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), PYTHONWARNINGS="ignore",
               OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "tools", "train_net.py"), *args],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    if kill_after is None:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-4000:]
        return
    last = os.path.join(args[args.index("OUTPUT_DIR") + 1], "last_checkpoint")
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if os.path.exists(last) and open(last).read() == kill_after:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == - \
        signal.SIGKILL, "training ended before it could be killed: " + err[-3000:]


def _logged_losses(out):
    with open(out / "metrics.json") as f:
        records = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k.startswith(("loss", "total_loss", "lr", "fast_rcnn"))}
            | {"iteration": r["iteration"]} for r in records if "total_loss" in r]


def _stage_two_weights(path):
    cfg = add_lt_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, STAGE_TWO))
    cfg.merge_from_list(["DATASETS.TRAIN", "()", "MODEL.WEIGHTS", "", *tiny_opts()])
    torch.save({"model": LTTrainer.build_model(cfg).state_dict()}, path)


PLAIN = "configs/Synthetic-LT/faster_rcnn_tiny_eqlv2.yaml"
STAGE_TWO = "configs/Synthetic-LT/decoupled/bacl_classifier_faster_rcnn_tiny.yaml"


@pytest.mark.parametrize("config, extra, kill_after, state_keys", [
    # checkpoint at 19, where the stopped process still had the log line of iteration 19 to write
    (PLAIN, ["SOLVER.MAX_ITER", "22", "SOLVER.CHECKPOINT_PERIOD", "20", "DATALOADER.SAMPLER_TRAIN",
             "RepeatFactorTrainingSampler", "DATALOADER.REPEAT_THRESHOLD", "0.1"],
     "model_0000019.pth", ["roi_heads.box_predictor.cls_loss.pos_grad",
                           "roi_heads.box_predictor.cls_loss.neg_grad",
                           "roi_heads.box_predictor.cls_loss.pos_neg"]),
    # checkpoint at 4; the line of iteration 11 smooths over losses logged before the kill
    (STAGE_TWO, ["SOLVER.MAX_ITER", "12", "SOLVER.CHECKPOINT_PERIOD", "5",
                 "DATALOADER.SAMPLER_TRAIN", "ClassAwareSampler",
                 "INPUT.MIN_SIZE_TRAIN", "(48, 56, 64)"],
     "model_0000004.pth", ["roi_heads.box_predictor.cls_loss.cm_numerator",
                           "roi_heads.box_predictor.cls_loss.num_gt",
                           "roi_heads.box_hallucinator.feature_mean",
                           "roi_heads.box_hallucinator.feature_var"]),
], ids=["eqlv2", "bacl_stage_two"])
def test_kill_and_resume_ends_as_the_uninterrupted_run(tiny_root, tmp_path, config, extra,
                                                       kill_after, state_keys):
    args = ["--config-file", config, "DATASETS.TEST", "()", *tiny_opts(),
            "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.BASE_LR", "0.005",
            *extra]
    if config == STAGE_TWO:
        _stage_two_weights(tmp_path / "stage_one.pth")
        args += ["MODEL.WEIGHTS", str(tmp_path / "stage_one.pth")]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _train([*args, "OUTPUT_DIR", str(whole)], tiny_root)
    _train([*args, "OUTPUT_DIR", str(killed)], tiny_root, kill_after=kill_after)
    assert not (killed / "model_final.pth").exists()
    _train(["--resume", *args, "OUTPUT_DIR", str(killed)], tiny_root)

    expected, resumed = (torch.load(d / "model_final.pth", weights_only=True)
                         for d in (whole, killed))
    assert set(state_keys) <= set(expected["model"])
    assert expected["model"].keys() == resumed["model"].keys()
    for key, value in expected["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert any(v.abs().sum() > 0 for k, v in expected["model"].items() if k in state_keys)
    momentum = [s["momentum_buffer"]
                for s in expected["trainer"]["_trainer"]["optimizer"]["state"].values()]
    assert momentum and all(torch.equal(a["momentum_buffer"], m) for a, m in zip(
        resumed["trainer"]["_trainer"]["optimizer"]["state"].values(), momentum))
    assert _logged_losses(killed) == _logged_losses(whole)
    max_iter = int(extra[1])
    assert [r["iteration"] for r in _logged_losses(whole)] == [
        i for i in range(max_iter) if (i + 1) % 20 == 0 or i == max_iter - 1]


def test_metrics_json_stays_strict_after_the_resume_truncates_it(tmp_path):
    """Resuming rewrites metrics.json and reopens the writer's file: NaN metrics written after
    that are still null (the strict JSON of LTTrainer's writers)."""
    from types import SimpleNamespace

    from detectron2.engine import hooks
    from detectron2.utils.events import EventStorage, JSONWriter

    from lt_d2.engine.metrics_json import make_strict
    from lt_d2.engine.resume import _truncate_metrics

    path = tmp_path / "metrics.json"
    writer = make_strict(JSONWriter(str(path)))
    with EventStorage(start_iter=0) as storage:
        for it in range(4):
            storage.iter = it
            storage.put_scalar("loss", float(it), smoothing_hint=False)
            writer.write()
    _truncate_metrics(SimpleNamespace(_hooks=[hooks.PeriodicWriter([writer])]), [1])
    with EventStorage(start_iter=2) as storage:  # the resumed run
        storage.put_scalar("bbox/AP", float("nan"), smoothing_hint=False)
        writer.write()
    writer.close()
    lines = path.read_text().splitlines()

    def refuse(token):
        raise ValueError(token)

    records = [json.loads(line, parse_constant=refuse) for line in lines]
    assert [r["iteration"] for r in records] == [0, 1, 2]
    assert records[-1]["bbox/AP"] is None
