# Copyright (c) lt_d2 contributors.
"""Post-hoc score calibration (TEST.LT.CALIBRATION) and its tuning tool."""
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import FastRCNNOutputLayers, cascade_rcnn
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes, Instances

from lt_d2.config import add_lt_config
from lt_d2.modeling import LTCascadeROIHeads, LTFastRCNNOutputLayers
from lt_d2.modeling import roi_heads as lt_roi_heads
from lt_d2.modeling.calibration import (
    ScoreCalibration,
    build_score_calibration,
    calibrate_probs,
    calibration_weights,
    losses_with_background,
)
from lt_d2.modeling.losses import CLS_LOSS_REGISTRY, build_cls_loss

from .conftest import REPO, copypaste_metrics, run_train_net, tiny_opts

CONFIG = "configs/Synthetic-LT/faster_rcnn_tiny_ce.yaml"
COUNTS = [100.0, 10.0, 10.0, 1.0]


def _direct_norcal(row, counts, gamma):
    """NorCal on one row of plain Python floats: reweigh, then restore the row's total."""
    weighted = [s * n ** -gamma for s, n in zip(row[:-1], counts)] + [row[-1]]
    return [w * sum(row) / sum(weighted) for w in weighted]


def test_norcal_matches_a_direct_computation_with_ties():
    probs = torch.tensor([
        [0.1, 0.2, 0.2, 0.1, 0.4],  # classes 1 and 2: same score, same count -> stay tied
        [0.3, 0.0, 0.0, 0.3, 0.4],  # classes 0 and 3: same score, counts 100 and 1
        [0.0, 0.0, 0.0, 0.0, 1.0],  # background only
        [0.2, 0.1, 0.1, 0.1, 0.2],  # not summing to 1 (FCBL's sigmoid scores): total kept
    ], dtype=torch.float64)
    got = calibrate_probs(probs, calibration_weights("norcal", COUNTS, 0.5).double())
    for row, out in zip(probs.tolist(), got.tolist()):
        assert out == pytest.approx(_direct_norcal(row, COUNTS, 0.5), rel=1e-6)
    assert got[0, 1] == got[0, 2]
    assert got[1, 3] > got[1, 0]  # the rare class now ranks first
    assert got[1, 3] / got[1, 0] == pytest.approx(100 ** 0.5, rel=1e-6)
    assert torch.equal(got[2], probs[2])
    assert torch.allclose(got.sum(1), probs.sum(1))


def test_background_share_grows_as_foreground_is_scaled_down():
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.05, 0.05]])
    got = calibrate_probs(probs, calibration_weights("norcal", COUNTS, 1.0))
    weighted_fg = 0.5 / 100 + 0.3 / 10 + 0.1 / 10 + 0.05 / 1
    assert got[0, -1].item() == pytest.approx(0.05 / (weighted_fg + 0.05), rel=1e-6)
    assert got.sum().item() == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("method", ["norcal", "logit_adjust"])
def test_exponent_zero_is_the_identity_bit_for_bit(method):
    torch.manual_seed(0)
    softmax = torch.randn(50, 5).mul(4).softmax(1)
    sigmoid_like = torch.rand(50, 5)
    weights = calibration_weights(method, COUNTS, 0.0)
    assert torch.equal(weights, torch.ones(4))
    for probs in (softmax, sigmoid_like):
        assert torch.equal(calibrate_probs(probs, weights), probs)


def test_logit_adjustment_is_the_softmax_of_shifted_logits():
    torch.manual_seed(1)
    logits, tau = torch.randn(20, 5, dtype=torch.float64) * 3, 0.7
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    shifted = logits.clone()
    shifted[:, :-1] -= tau * prior.log()  # the background logit is not adjusted
    weights = calibration_weights("logit_adjust", COUNTS, tau).double()
    got = calibrate_probs(logits.softmax(1), weights)
    assert torch.allclose(got, shifted.softmax(1), rtol=1e-5, atol=1e-12)


def test_a_class_without_training_examples_counts_as_one():
    weights = calibration_weights("norcal", [0.0, 1.0, 4.0], 0.5)
    assert weights.tolist() == [1.0, 1.0, 0.5]
    module = ScoreCalibration("logit_adjust", torch.tensor([0.0, 3.0]), 1.0)
    out = module(torch.tensor([[0.2, 0.3, 0.5]]))
    assert torch.isfinite(out).all()
    # priors after the floor: 1/4 and 3/4 -> weights 4 and 4/3
    expected = torch.tensor([0.8, 0.4, 0.5]) / 1.7
    assert torch.allclose(out, expected)


# ---- building: config, refusal, statistics -----------------------------------------------------

def _cfg(loss="SoftmaxCELoss", method="none", **calibration):
    cfg = add_lt_config(get_cfg())
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 4
    cfg.MODEL.LT.CLS_LOSS = loss
    cfg.TEST.LT.CALIBRATION.METHOD = method
    for key, value in calibration.items():
        cfg.TEST.LT.CALIBRATION[key] = value
    return cfg


STATS = SimpleNamespace(image_count=torch.tensor([50, 5, 0, 1]),
                        instance_count=torch.tensor([80, 9, 0, 2]))


def test_defaults_and_the_losses_it_applies_to():
    cfg = _cfg()
    assert cfg.TEST.LT.CALIBRATION.METHOD == "none" and cfg.TEST.LT.CALIBRATION.COUNT == "image"
    assert build_score_calibration(cfg, build_cls_loss(cfg, 4)) is None
    assert losses_with_background() == ["ACSLLoss", "EQLv2Loss", "FCBLLoss", "GroupSoftmaxLoss",
                                        "SeesawLoss", "SigmoidCELoss", "SoftmaxCELoss"]


@pytest.mark.parametrize("loss", sorted(set(n for n, _ in CLS_LOSS_REGISTRY)
                                        - set(losses_with_background())))
def test_losses_without_background_are_refused_by_name(loss):
    cls = CLS_LOSS_REGISTRY.get(loss)
    with pytest.raises(ValueError) as e:  # refused before anything else is read
        build_score_calibration(_cfg(loss, "norcal"), cls.__new__(cls), STATS)
    message = str(e.value)
    assert loss in message and "METHOD none" in message
    assert "It applies to: ACSLLoss, EQLv2Loss, FCBLLoss, GroupSoftmaxLoss, SeesawLoss, " \
        "SigmoidCELoss, SoftmaxCELoss." in message


@pytest.mark.parametrize("count, key", [("image", "image_count"), ("instance", "instance_count")])
def test_counts_come_from_the_class_statistics(count, key):
    cfg = _cfg("SoftmaxCELoss", "norcal", GAMMA=1.0, COUNT=count)
    module = build_score_calibration(cfg, build_cls_loss(cfg, 4), STATS)
    expected = 1 / getattr(STATS, key).double().clamp(min=1)
    assert torch.allclose(module.class_weights.double(), expected)
    assert "class_weights" not in module.state_dict()  # never in a checkpoint


def test_bad_keys_and_missing_statistics_fail_clearly():
    cfg = _cfg("SoftmaxCELoss", "platt")
    with pytest.raises(ValueError, match="TEST.LT.CALIBRATION.METHOD='platt'"):
        build_score_calibration(cfg, build_cls_loss(cfg, 4), STATS)
    cfg = _cfg("SoftmaxCELoss", "norcal", COUNT="boxes")
    with pytest.raises(ValueError, match="COUNT='boxes'"):
        build_score_calibration(cfg, build_cls_loss(cfg, 4), STATS)
    cfg = _cfg("SoftmaxCELoss", "norcal")  # DATASETS.TRAIN is empty: no statistics
    with pytest.raises(RuntimeError, match="needs the per-class training counts"):
        build_score_calibration(cfg, build_cls_loss(cfg, 4))


# ---- the predictor and the cascade ------------------------------------------------------------

def _predictor_inputs():
    torch.manual_seed(0)
    features = torch.randn(7, 8) * 3
    proposals = []
    for size, n in [((30, 40), 4), ((20, 20), 3)]:
        p = Instances(size)
        xy = torch.rand(n, 2) * 10
        p.proposal_boxes = Boxes(torch.cat([xy, xy + 5 + torch.rand(n, 2) * 5], 1))
        proposals.append(p)
    return features, proposals


def _predictor(cfg, calibration=None):
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.001
    torch.manual_seed(2)
    predictor = LTFastRCNNOutputLayers(cfg, ShapeSpec(channels=8))
    if calibration is not None:
        predictor.calibrated, predictor.score_calibration = True, calibration
    with torch.no_grad():
        predictor.cls_score.weight.normal_(std=0.5)
    return predictor.eval()


def _same(a, b):
    return (torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
            and torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes))


def test_none_is_detectron2s_inference_bit_for_bit_and_gamma_changes_it():
    features, proposals = _predictor_inputs()
    plain = _predictor(_cfg())
    assert not plain.calibrated
    predictions = plain(features)
    ours, _ = plain.inference(predictions, proposals)
    stock, _ = FastRCNNOutputLayers.inference(plain, predictions, proposals)
    assert all(_same(a, b) for a, b in zip(ours, stock)) and len(ours[0]) > 0

    identity = _predictor(_cfg(), ScoreCalibration("norcal", COUNTS, 0.0))
    got, _ = identity.inference(predictions, proposals)
    assert all(_same(a, b) for a, b in zip(got, stock))

    calibrated = _predictor(_cfg(), ScoreCalibration("norcal", COUNTS, 1.0))
    got, _ = calibrated.inference(predictions, proposals)
    assert not all(_same(a, b) for a, b in zip(got, stock))
    weights = calibration_weights("norcal", COUNTS, 1.0)
    scores = [calibrate_probs(s, weights) for s in plain.predict_probs(predictions, proposals)]
    expected, _ = fast_rcnn_inference(
        plain.predict_boxes(predictions, proposals), scores, [p.image_size for p in proposals],
        plain.test_score_thresh, plain.test_nms_thresh, plain.test_topk_per_image)
    assert all(_same(a, b) for a, b in zip(got, expected))


@pytest.mark.parametrize("test_score", ["mean_probs", "mean_logits"])
def test_cascade_calibrates_the_combined_scores(monkeypatch, test_score):
    from .test_cascade_eql_options import _build, _cascade_setup, _eval_run, _record_inference

    cfg, images, features, shape, _, proposal_gen = _cascade_setup(TEST_SCORE=test_score)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 4
    module = cascade_rcnn if test_score == "mean_probs" else lt_roi_heads
    plain_calls = _record_inference(monkeypatch, module)
    heads = _build(LTCascadeROIHeads, cfg, shape)
    _eval_run(heads, images, features, proposal_gen)
    lt_calls = _record_inference(monkeypatch, lt_roi_heads)
    last = heads.box_predictor[-1]
    last.calibrated, last.score_calibration = True, ScoreCalibration("norcal", COUNTS, 0.8)
    _eval_run(heads, images, features, proposal_gen)
    (plain_boxes, plain_scores), (boxes, scores) = plain_calls[0], lt_calls[-1]
    weights = calibration_weights("norcal", COUNTS, 0.8)
    assert all(torch.equal(s, calibrate_probs(p, weights)) for s, p in zip(scores, plain_scores))
    assert all(torch.equal(a, b) for a, b in zip(boxes, plain_boxes))


# ---- end to end: --eval-only and tools/tune_calibration.py ------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("calib_train")
    proc = run_train_net(["--config-file", CONFIG, "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "30",
                          "DATASETS.TEST", "()", *tiny_opts()], tiny_root)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return str(out / "model_final.pth")


def _eval_only(tiny_root, weights, out, *opts):
    proc = run_train_net(["--config-file", CONFIG, "--eval-only", "MODEL.WEIGHTS", weights,
                          "OUTPUT_DIR", str(out), *tiny_opts(), *opts], tiny_root)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    with open(out / "metrics.json") as f:
        (line,) = [json.loads(x) for x in f]
    return copypaste_metrics(proc.stdout + proc.stderr)["bbox"], line


def test_eval_only_with_norcal_and_the_tuning_tool(tiny_root, tiny_model, tmp_path):
    plain, plain_line = _eval_only(tiny_root, tiny_model, tmp_path / "plain")
    assert "calibration" not in plain_line
    norcal, line = _eval_only(tiny_root, tiny_model, tmp_path / "norcal",
                              "TEST.LT.CALIBRATION.METHOD", "norcal",
                              "TEST.LT.CALIBRATION.GAMMA", "1.0")
    assert line["calibration"] == {"method": "norcal", "exponent": 1.0, "count": "image"}
    assert norcal != plain
    zero, _ = _eval_only(tiny_root, tiny_model, tmp_path / "zero",
                         "TEST.LT.CALIBRATION.METHOD", "norcal", "TEST.LT.CALIBRATION.GAMMA", "0.0")
    assert zero == plain

    env = dict(os.environ, DETECTRON2_DATASETS=str(tiny_root), PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "tune_calibration.py"), "--config-file",
         CONFIG, "--values", "0", "1.0", "--metric", "APr", "MODEL.WEIGHTS", tiny_model,
         *tiny_opts()], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "the evaluation set itself" in out and "Best by APr" in out
    table = out[out.index("| gamma | AP | APr | APc | APf |"):].splitlines()[2:4]
    rows = {float(cells[0]): [float(c) for c in cells[1:]]
            for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table)}
    expected = [round(x, 2) for x in (plain[k] for k in ("AP", "APr", "APc", "APf"))]
    assert rows[0.0] == expected  # the same detections, evaluated the same way
    assert rows[1.0] == [round(norcal[k], 2) for k in ("AP", "APr", "APc", "APf")]
    assert not any(math.isnan(v) for v in rows[1.0])


def test_tune_calibration_refuses_a_model_without_background(tiny_root, tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tiny_root), PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "tune_calibration.py"), "--config-file",
         "configs/Synthetic-LT/faster_rcnn_tiny_eql.yaml", *tiny_opts()],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "EQLLoss" in proc.stderr and "It applies to: ACSLLoss" in proc.stderr


def test_a_subset_of_images_is_scored_against_its_own_ground_truth():
    from lt_d2.evaluation.calibration_sweep import restrict_to_images

    gt = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1}],
          "annotations": [{"id": 1, "image_id": 1}, {"id": 2, "image_id": 2}]}
    assert restrict_to_images(gt, [1, 2]) is gt
    sub = restrict_to_images(gt, [2])
    assert sub["images"] == [{"id": 2}] and sub["annotations"] == [{"id": 2, "image_id": 2}]
    assert sub["categories"] == gt["categories"] and len(gt["images"]) == 2
