# Copyright (c) lt_d2 contributors.
"""Cascade per-stage loss weights and test scores; EQL's tail classes by instance count."""
import copy

import pytest
import torch
from detectron2.modeling.proposal_generator.build import build_proposal_generator
from detectron2.modeling.roi_heads import CascadeROIHeads, cascade_rcnn
from detectron2.utils.events import EventStorage

from lt_d2.config import add_lt_config
from lt_d2.modeling import LTCascadeROIHeads
from lt_d2.modeling import roi_heads as lt_roi_heads
from lt_d2.modeling.losses import EQLLoss, build_cls_loss, eql_loss

from .test_losses import bce_sum
from .test_roi_heads import _cfg, _inputs

WEIGHTS = [1.0, 0.5, 0.25]


def _cascade_setup(**lt_cascade):
    cfg = _cfg(cascade=True)
    cfg.MODEL.MASK_ON = False
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # untrained scores are ~1 / 81: keep them
    for key, value in lt_cascade.items():
        cfg.MODEL.LT.CASCADE[key] = value
    torch.manual_seed(0)
    images, features, shape, gts = _inputs(channels=16)
    torch.manual_seed(1)
    proposal_gen = build_proposal_generator(cfg, shape)
    return cfg, images, features, shape, gts, proposal_gen


def _build(cls, cfg, shape):
    torch.manual_seed(5)
    return cls(cfg, shape)


def _train_losses(heads, images, features, gts, proposal_gen):
    torch.manual_seed(3)
    with EventStorage():
        proposals, _ = proposal_gen(images, features, copy.deepcopy(gts))
        _, losses = heads(images, features, proposals, copy.deepcopy(gts))
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in heads.named_parameters() if p.grad is not None}
    return losses, grads


def test_stage_loss_weights_scale_each_stages_losses():
    cfg, images, features, shape, gts, proposal_gen = _cascade_setup()
    plain = _build(LTCascadeROIHeads, cfg, shape)
    cfg.MODEL.LT.CASCADE.STAGE_LOSS_WEIGHTS = WEIGHTS
    weighted = _build(LTCascadeROIHeads, cfg, shape)
    assert weighted.stage_loss_weights == WEIGHTS

    plain_losses, plain_grads = _train_losses(plain, images, features, gts, proposal_gen)
    losses, grads = _train_losses(weighted, images, features, gts, proposal_gen)
    assert losses.keys() == plain_losses.keys()
    assert {k for k in losses if k.startswith(("loss_cls", "loss_box_reg"))} == {
        f"{name}_stage{k}" for name in ("loss_cls", "loss_box_reg") for k in range(3)}
    for name, value in plain_losses.items():
        stage = int(name[-1])
        assert torch.equal(losses[name], value * WEIGHTS[stage]), name
        assert value.item() != 0  # otherwise scaling would go unnoticed
    # the gradient of a stage's own predictor scales with its weight
    for stage, weight in enumerate(WEIGHTS):
        for param in ("cls_score.weight", "bbox_pred.weight"):
            name = f"box_predictor.{stage}.{param}"
            assert torch.allclose(grads[name], plain_grads[name] * weight, rtol=1e-5, atol=1e-9)


def test_empty_stage_loss_weights_are_detectron2():
    cfg, images, features, shape, gts, proposal_gen = _cascade_setup(STAGE_LOSS_WEIGHTS=[])
    stock_losses, stock_grads = _train_losses(
        _build(CascadeROIHeads, cfg, shape), images, features, gts, proposal_gen)
    our_losses, our_grads = _train_losses(
        _build(LTCascadeROIHeads, cfg, shape), images, features, gts, proposal_gen)
    assert stock_losses.keys() == our_losses.keys()
    assert all(torch.equal(stock_losses[k], our_losses[k]) for k in stock_losses)
    assert stock_grads.keys() == our_grads.keys()
    assert all(torch.equal(stock_grads[k], our_grads[k]) for k in stock_grads)


def test_unscaled_feature_gradient_is_three_times_detectron2s():
    """mmdetection's Cascade does not scale the gradient into the pooled features by 1/3."""
    cfg, images, features, shape, gts, proposal_gen = _cascade_setup()
    grads = {}
    for scale in (True, False):
        cfg.MODEL.LT.CASCADE.SCALE_FEATURE_GRADIENT = scale
        heads = _build(LTCascadeROIHeads, cfg, shape)
        assert heads.scale_feature_gradient is scale
        leaf = {k: v.detach().clone().requires_grad_() for k, v in features.items()}
        losses, param_grads = _train_losses(heads, images, leaf, gts, proposal_gen)
        grads[scale] = ({k: v.grad for k, v in leaf.items()}, param_grads, losses)
    (scaled, scaled_params, scaled_losses), (plain,
                                             plain_params, plain_losses) = grads[True], grads[False]
    assert all(torch.equal(scaled_losses[k], plain_losses[k]) for k in scaled_losses)
    for k in scaled:
        assert scaled[k].abs().sum() > 0
        assert torch.allclose(plain[k], 3 * scaled[k], rtol=1e-4, atol=1e-10), k
    # the heads' own parameters get the same gradient either way
    for name, g in scaled_params.items():
        assert torch.allclose(plain_params[name], g, rtol=1e-4, atol=1e-10), name


@pytest.mark.parametrize("weights", [[1.0, 0.5], [1.0, 0.5, 0.25, 0.125]])
def test_stage_loss_weights_of_the_wrong_length_fail(weights):
    cfg, *_, shape, _, _ = _cascade_setup(STAGE_LOSS_WEIGHTS=weights)
    with pytest.raises(ValueError, match=r"MODEL\.LT\.CASCADE\.STAGE_LOSS_WEIGHTS.*\(3"):
        LTCascadeROIHeads(cfg, shape)


def test_test_score_from_config_and_unknown_value():
    cfg, *_, shape, _, _ = _cascade_setup(TEST_SCORE="mean_logits")
    assert LTCascadeROIHeads(cfg, shape).test_score == "mean_logits"
    cfg.MODEL.LT.CASCADE.TEST_SCORE = "max_probs"
    with pytest.raises(ValueError, match="TEST_SCORE='max_probs'.*'mean_probs', 'mean_logits'"):
        LTCascadeROIHeads(cfg, shape)


def _record_inference(monkeypatch, module):
    """Record the (boxes, scores) that ``module``'s cascade inference passes to NMS."""
    calls, real = [], module.fast_rcnn_inference

    def recording(boxes, scores, *args):
        calls.append(([b.clone() for b in boxes], [s.clone() for s in scores]))
        return real(boxes, scores, *args)

    monkeypatch.setattr(module, "fast_rcnn_inference", recording)
    return calls


def _eval_run(heads, images, features, proposal_gen):
    """Test-time outputs, and the classification logits each stage's predictor produced."""
    heads.eval(), proposal_gen.eval()
    logits = []
    hooks = [p.register_forward_hook(lambda mod, inp, out: logits.append(out[0]))
             for p in heads.box_predictor]
    with torch.no_grad():
        proposals, _ = proposal_gen(images, features)
        out, _ = heads(images, features, proposals)
    for hook in hooks:
        hook.remove()
    return out, logits


@pytest.mark.parametrize("loss", ["SoftmaxCELoss", "SigmoidCELoss"])
def test_mean_logits_scores_are_the_loss_probs_of_the_mean_logits(monkeypatch, loss):
    cfg, images, features, shape, gts, proposal_gen = _cascade_setup(TEST_SCORE="mean_probs")
    cfg.MODEL.LT.CLS_LOSS = loss
    d2_calls = _record_inference(monkeypatch, cascade_rcnn)
    lt_calls = _record_inference(monkeypatch, lt_roi_heads)

    heads = _build(LTCascadeROIHeads, cfg, shape)
    with torch.no_grad():  # logits far from 0, where the two scores differ (init: std 0.01)
        for predictor in heads.box_predictor:
            predictor.cls_score.weight.normal_(std=0.3)
    _, probs_logits = _eval_run(heads, images, features, proposal_gen)
    heads.test_score = "mean_logits"
    logits_out, stage_logits = _eval_run(heads, images, features, proposal_gen)
    assert len(d2_calls) == len(lt_calls) == 1 and len(stage_logits) == 3
    assert all(torch.equal(a, b) for a, b in zip(probs_logits, stage_logits))

    probs = heads.box_predictor[2].cls_loss.probs
    expected = probs((stage_logits[0] + stage_logits[1] + stage_logits[2]) / 3)
    mean_probs = sum(probs(z) for z in stage_logits) / 3
    (d2_boxes, d2_scores), (lt_boxes, lt_scores) = d2_calls[0], lt_calls[0]
    assert torch.allclose(torch.cat(lt_scores), expected, rtol=1e-6, atol=1e-7)
    assert torch.allclose(torch.cat(d2_scores), mean_probs, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(expected, mean_probs, rtol=1e-3, atol=1e-5)  # the test can fail
    assert [len(s) for s in lt_scores] == [len(s) for s in d2_scores]
    # boxes: the last stage's, as detectron2
    assert all(torch.equal(a, b) for a, b in zip(lt_boxes, d2_boxes))
    assert all(len(i) > 0 for i in logits_out)


def test_mean_probs_is_detectron2():
    cfg, images, features, shape, gts, proposal_gen = _cascade_setup(TEST_SCORE="mean_probs")
    stock_out, _ = _eval_run(_build(CascadeROIHeads, cfg, shape), images, features, proposal_gen)
    our_out, _ = _eval_run(_build(LTCascadeROIHeads, cfg, shape), images, features, proposal_gen)
    for a, b in zip(stock_out, our_out):
        assert len(a) > 0
        assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)


# ---- EQL: FREQUENCY "instance" / "image" ------------------------------------------------------

INSTANCE_COUNT = torch.tensor([5000, 1652, 1651, 3])
IMAGE_COUNT = torch.tensor([300.0, 40.0, 5.0, 1.0])


def test_eql_instance_frequency_tail_mask_and_loss():
    loss_fn = EQLLoss(num_classes=4, instance_count=INSTANCE_COUNT, lambda_=1652,
                      frequency="instance")
    assert torch.equal(loss_fn.tail_mask, (INSTANCE_COUNT < 1652).float())
    assert loss_fn.tail_mask.tolist() == [0, 0, 1, 1]
    logits = torch.tensor([[0.3, -0.2, 0.5, 0.1], [0.1, 0.4, -0.3, 0.2], [1.0, 0.0, 0.2, -0.5]])
    labels = torch.tensor([1, 4, 2])  # class 1, background, class 2 (a tail class)
    expected = (
        bce_sum(0.3, 0) + bce_sum(-0.2, 1)  # tail classes 2, 3 not pushed down
        + bce_sum(0.1, 0) + bce_sum(0.4, 0) + bce_sum(-0.3, 0) + bce_sum(0.2, 0)  # background
        + bce_sum(1.0, 0) + bce_sum(0.0, 0) + bce_sum(0.2, 1)  # own label counts; class 3 not
    ) / 3
    assert loss_fn(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_eql_image_frequency_unchanged():
    loss_fn = EQLLoss(num_classes=4, image_count=IMAGE_COUNT, num_images=1000, lambda_=0.01,
                      instance_count=INSTANCE_COUNT)
    assert loss_fn.frequency == "image"
    assert torch.equal(loss_fn.tail_mask, (IMAGE_COUNT / 1000 < 0.01).float())
    assert loss_fn.tail_mask.tolist() == [0, 0, 1, 1]
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 4, 4])
    assert torch.equal(loss_fn(logits, labels), eql_loss(logits, labels, loss_fn.tail_mask))


def test_eql_unknown_frequency_and_missing_counts_fail():
    with pytest.raises(ValueError, match="FREQUENCY='images'.*'image', 'instance'"):
        EQLLoss(num_classes=4, instance_count=INSTANCE_COUNT, frequency="images")
    # instance frequency needs instance counts; image counts alone do not do
    loss_fn = EQLLoss(num_classes=4, image_count=IMAGE_COUNT, num_images=1000, frequency="instance")
    with pytest.raises(RuntimeError, match="instance counts"):
        loss_fn(torch.randn(2, 4), torch.tensor([0, 4]))


def test_eql_frequency_from_config(monkeypatch):
    from detectron2.config import get_cfg

    from lt_d2.data.class_stats import ClassStats

    stats = ClassStats(image_count=IMAGE_COUNT.numpy(), instance_count=INSTANCE_COUNT.numpy(),
                       frequency=["f", "c", "r", "r"], num_images=1000)
    monkeypatch.setattr("lt_d2.data.dataset_stats.train_class_stats", lambda cfg, why: stats)
    cfg = add_lt_config(get_cfg())
    cfg.MODEL.LT.CLS_LOSS = "EQLLoss"
    cfg.MODEL.LT.EQL.LAMBDA = 1652.0
    cfg.MODEL.LT.EQL.FREQUENCY = "instance"
    assert build_cls_loss(cfg, 4).tail_mask.tolist() == [0, 0, 1, 1]
    cfg.MODEL.LT.EQL.LAMBDA = 0.2
    cfg.MODEL.LT.EQL.FREQUENCY = "image"  # 0.3, 0.04, 0.005, 0.001 of the images
    assert build_cls_loss(cfg, 4).tail_mask.tolist() == [0, 1, 1, 1]
