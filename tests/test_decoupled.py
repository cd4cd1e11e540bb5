# Copyright (c) lt_d2 contributors.
"""Decoupled training: surgery, stage-two freezing, class-aware sampling, LWS, BAGS."""
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data.common import ToIterableDataset
from torch.utils.data import DataLoader

from lt_d2.checkpoint import checkpoint_surgery, load_checkpoint, save_checkpoint
from lt_d2.config import add_lt_config
from lt_d2.data import ClassAwareSampler, build_training_sampler, images_per_class
from lt_d2.engine import LTTrainer
from lt_d2.engine.freeze import freeze_all_but
from lt_d2.modeling.losses import GroupSoftmaxLoss

from .conftest import REPO, copypaste_metrics, run_train_net, tiny_opts

SYNTH = os.path.join(REPO, "configs", "Synthetic-LT")
CRT_CONFIG = "configs/Synthetic-LT/decoupled/crt_faster_rcnn_tiny.yaml"


def _model(config, *opts):
    cfg = add_lt_config(get_cfg())
    cfg.merge_from_file(os.path.join(SYNTH, config))
    cfg.merge_from_list(["DATASETS.TRAIN", "()", "MODEL.ROI_HEADS.NUM_CLASSES", "12", *opts])
    return LTTrainer.build_model(cfg), cfg


# ---- surgery ----------------------------------------------------------------------------------

@pytest.mark.parametrize("config, stages", [
    ("faster_rcnn_tiny_ce.yaml", [""]),
    ("mask_rcnn_tiny_ce.yaml", [""]),
    ("cascade_rcnn_tiny_ce.yaml", ["0.", "1.", "2."]),
])
def test_surgery_on_faster_mask_and_cascade(config, stages):
    model, _ = _model(config, "MODEL.LT.CLS_LOSS", "EQLv2Loss")
    state = model.state_dict()
    ckpt = {"model": state, "iteration": 99, "optimizer": {"x": 1}, "scheduler": {}}
    classifier = {
        f"roi_heads.box_predictor.{s}cls_score.{p}" for s in stages for p in ("weight", "bias")}
    loss_state = {k for k in state if ".cls_loss." in k}
    assert loss_state  # EQLv2 statistics
    removed, report = checkpoint_surgery(ckpt, "remove")
    assert set(report["removed"]) == classifier | loss_state
    assert set(removed) == {"model"}
    assert report["dropped_state"] == ["iteration", "optimizer", "scheduler"]
    assert all(torch.equal(removed["model"][k], v)
               for k, v in state.items() if k in removed["model"])
    reset, report = checkpoint_surgery(ckpt, "reset")
    assert set(report["removed"]) == loss_state and classifier <= set(reset["model"])
    # a new class count also drops class-specific box regression and the mask predictor
    _, report = checkpoint_surgery(ckpt, "reset", num_classes=5)
    expected = classifier | loss_state | {
        k for k in state if k.startswith("roi_heads.mask_head.predictor.")}
    expected |= {k for k in state if "bbox_pred" in k and state[k].shape[0] > 4}
    assert set(report["removed"]) == expected


def test_removed_classifier_is_the_only_missing_key_on_load(tmp_path):
    model, _ = _model("faster_rcnn_tiny_ce.yaml")
    ckpt, _ = checkpoint_surgery({"model": model.state_dict()}, "remove")
    save_checkpoint(ckpt, str(tmp_path / "m.pth"))
    fresh, _ = _model("faster_rcnn_tiny_ce.yaml")
    incompatible = fresh.load_state_dict(load_checkpoint(
        str(tmp_path / "m.pth"))["model"], strict=False)
    assert sorted(incompatible.missing_keys) == ["roi_heads.box_predictor.cls_score.bias",
                                                 "roi_heads.box_predictor.cls_score.weight"]


def _surgery_cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "ckpt_surgery.py"), *args],
                          capture_output=True, text=True)


def test_surgery_cli_refuses_bad_input_and_writes_nothing(tmp_path):
    proc = _surgery_cli("--ckpt-path", str(tmp_path / "none.pth"), "--method", "remove")
    assert proc.returncode != 0 and "does not exist" in proc.stderr
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    proc = _surgery_cli("--ckpt-path", str(tmp_path / "junk.pth"), "--method", "remove")
    assert proc.returncode != 0 and "not a Detectron2 checkpoint" in proc.stderr
    torch.save({"model": {"backbone.w": torch.zeros(2)}}, tmp_path / "nocls.pth")
    proc = _surgery_cli("--ckpt-path", str(tmp_path / "nocls.pth"), "--method", "reset")
    assert proc.returncode != 0 and "no classifier keys" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["junk.pth", "nocls.pth"]


def test_surgery_cli_never_replaces_its_input_or_an_existing_file(tmp_path):
    model, _ = _model("faster_rcnn_tiny_ce.yaml")
    src = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict(), "iteration": 3}, src)
    before = src.read_bytes()
    proc = _surgery_cli("--ckpt-path", str(src), "--method", "remove", "--out", str(src))
    assert proc.returncode != 0 and "--overwrite" in proc.stderr and src.read_bytes() == before
    proc = _surgery_cli("--ckpt-path", str(src), "--method", "remove")
    assert proc.returncode == 0 and "removed 2 tensors" in proc.stdout
    out = tmp_path / "model_reset_remove.pth"
    assert set(torch.load(out)) == {"model"}
    proc = _surgery_cli("--ckpt-path", str(src), "--method", "remove")
    assert proc.returncode != 0 and "exists" in proc.stderr
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".surgery-")]


# ---- freezing, LWS ----------------------------------------------------------------------------

def test_freeze_all_but_listed_parameters_and_batchnorm():
    model, _ = _model("faster_rcnn_tiny_ce.yaml")
    trainable = freeze_all_but(model, ["roi_heads.box_predictor.cls_score"])
    assert trainable == ["roi_heads.box_predictor.cls_score.weight",
                         "roi_heads.box_predictor.cls_score.bias"]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with pytest.raises(ValueError, match="match no parameter"):
        freeze_all_but(model, ["roi_heads.nothing_here"])


def test_lws_trains_only_the_scales():
    model, _ = _model("faster_rcnn_tiny_ce.yaml", "MODEL.LT.CLASSIFIER", "lws")
    freeze_all_but(model, ["roi_heads.box_predictor.cls_score.scales"])
    layer = model.roi_heads.box_predictor.cls_score
    assert torch.equal(layer.scales, torch.ones(13, 1))
    layer(torch.randn(4, layer.in_features)).sum().backward()
    grads = [n for n, p in model.named_parameters() if p.grad is not None]
    assert grads == ["roi_heads.box_predictor.cls_score.scales"]


# ---- BAGS -------------------------------------------------------------------------------------

def test_bags_groups_and_probability_merge():
    counts = [5, 9, 10, 150, 999, 1000, 4000, 3]
    loss_fn = GroupSoftmaxLoss(num_classes=8, instance_count=counts)
    assert loss_fn.num_logits == 8 + 1 + 5  # 4 foreground groups + the background group
    logits = torch.randn(20, loss_fn.num_logits)
    probs = loss_fn.probs(logits)
    assert probs.shape == (20, 9) and torch.allclose(probs.sum(1), torch.ones(20), atol=1e-6)
    official = GroupSoftmaxLoss(num_classes=8, instance_count=counts, normalize_scores=False)
    raw = official.probs(logits)
    assert torch.equal(raw[:, -1], probs[:, -1])  # same background score
    assert torch.equal(raw[:, :-1].argmax(1), probs[:, :-1].argmax(1))  # same ranking per RoI
    group0 = logits[:, :4].softmax(1)  # classes 0, 1, 7 (<10 instances) after "others"
    fg = logits[:, -2:].softmax(1)[:, 0]
    assert torch.allclose(raw[:, [0, 1, 7]], group0[:, 1:] * fg[:, None])
    labels = torch.tensor([0, 3, 8, 8, 8, 6] + [8] * 14)
    loss = loss_fn(logits.requires_grad_(), labels)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad.abs().sum() > 0


def test_bags_group_without_rois_gets_no_loss():
    loss_fn = GroupSoftmaxLoss(num_classes=3, instance_count=[5, 50, 500], others_ratio=8.0)
    logits = torch.zeros(4, loss_fn.num_logits)
    only_bg = loss_fn(logits, torch.full((4,), 3))
    assert torch.allclose(only_bg, torch.tensor(np.log(2.0), dtype=torch.float32))


# ---- samplers ---------------------------------------------------------------------------------

def _toy(counts):
    dicts = []
    for c, n in enumerate(counts):
        dicts += [{"annotations": [{"category_id": c}]} for _ in range(n)]
    return dicts


def test_class_aware_sampler_balances_a_long_tail():
    dicts = _toy([90, 9, 1])
    sampler = ClassAwareSampler(images_per_class(dicts, 3), seed=0)
    drawn = list(itertools.islice(iter(sampler), 3000))
    classes = np.bincount([dicts[i]["annotations"][0]["category_id"] for i in drawn], minlength=3)
    assert classes.tolist() == [1000, 1000, 1000]


def test_class_aware_stream_is_identical_across_workers_and_shards_across_ranks(monkeypatch):
    dicts = _toy([50, 7, 3, 0])
    stream = list(itertools.islice(iter(ClassAwareSampler(images_per_class(dicts, 4), seed=3)), 60))
    for workers in (0, 2):
        sampler = ClassAwareSampler(images_per_class(dicts, 4), seed=3)
        loader = DataLoader(ToIterableDataset(list(range(len(dicts))), sampler),
                            num_workers=workers, batch_size=None)
        assert list(itertools.islice(iter(loader), 60)) == stream
    from detectron2.utils import comm

    shards = []
    for rank in range(2):
        monkeypatch.setattr(comm, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(comm, "get_world_size", lambda: 2)
        shards.append(list(itertools.islice(
            iter(ClassAwareSampler(images_per_class(dicts, 4), seed=3)), 30)))
    assert [x for pair in zip(*shards) for x in pair] == stream


def test_class_aware_sampler_skips_classes_without_images(caplog):
    sampler = ClassAwareSampler(images_per_class(_toy([4, 0, 2]), 3), seed=0)
    assert "1 classes have no training image" in caplog.text
    assert set(itertools.islice(iter(sampler), 50)) <= set(range(6))


def test_repeat_factor_ceil_rounding():
    cfg = add_lt_config(get_cfg())
    cfg.DATALOADER.SAMPLER_TRAIN = "RepeatFactorTrainingSampler"
    cfg.DATALOADER.REPEAT_THRESHOLD = 0.5
    cfg.DATALOADER.LT.REPEAT_ROUNDING = "ceil"
    dicts = [{"annotations": [{"category_id": 0}, {"category_id": 1}]},
             {"annotations": [{"category_id": 0}]}, {"annotations": []}]
    sampler = build_training_sampler(cfg, dicts)
    assert (sampler._int_part + sampler._frac_part).tolist() == [2.0, 1.0, 1.0]
    cfg.DATALOADER.LT.REPEAT_ROUNDING = "nearest"
    with pytest.raises(ValueError, match="REPEAT_ROUNDING"):
        build_training_sampler(cfg, dicts)


# ---- stage one -> surgery -> stage two -> evaluation ---------------------------------------------

def test_stage_two_trains_only_the_listed_parameters(tiny_root, tmp_path):
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    base = ["SOLVER.CHECKPOINT_PERIOD", "100", *tiny_opts()]
    proc = run_train_net(["--config-file", "configs/Synthetic-LT/faster_rcnn_tiny_ce.yaml",
                          "OUTPUT_DIR", str(stage1), "SOLVER.MAX_ITER", "8", "DATASETS.TEST", "()",
                          *base], tiny_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _surgery_cli("--ckpt-path", str(stage1 / "model_final.pth"),
                        "--method", "remove").returncode == 0
    weights = stage1 / "model_reset_remove.pth"
    proc = run_train_net(["--config-file", CRT_CONFIG,
                          "OUTPUT_DIR", str(stage2), "MODEL.WEIGHTS", str(weights),
                          "SOLVER.MAX_ITER", "6", *base], tiny_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "Stage two: 2 of" in log and "ClassAwareSampler" in log
    assert "APr" in copypaste_metrics(log)["bbox"]
    before = torch.load(weights)["model"]
    after = torch.load(stage2 / "model_final.pth")["model"]
    changed = sorted(k for k in set(before) & set(after) if not torch.equal(before[k], after[k]))
    assert changed == []  # every loaded tensor (backbone, BN statistics, box regression) is intact
    # frozen batch norms keep their statistics and lose only the update counter
    assert all(k.endswith("num_batches_tracked") for k in set(before) - set(after))
    assert sorted(set(after) - set(before)) == ["roi_heads.box_predictor.cls_score.bias",
                                                "roi_heads.box_predictor.cls_score.weight"]

    # weights that do not fit the frozen model: refused before training
    proc = run_train_net(["--config-file", CRT_CONFIG,
                          "OUTPUT_DIR", str(tmp_path / "bad"), "MODEL.WEIGHTS", str(weights),
                          "MODEL.TINY_NET.CHANNELS", "[16,32,48,64]", *base], tiny_root)
    assert proc.returncode != 0 and "does not fit the frozen part" in proc.stderr
    proc = run_train_net(["--config-file", CRT_CONFIG,
                          "OUTPUT_DIR", str(tmp_path / "bad2"), "MODEL.WEIGHTS", str(weights),
                          "MODEL.LT.TRAINABLE", "['roi_heads.nope']", *base], tiny_root)
    assert proc.returncode != 0 and "match no parameter" in proc.stderr
