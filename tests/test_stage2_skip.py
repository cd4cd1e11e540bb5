# Copyright (c) lt_d2 contributors.
"""Decoupled stage two skips the losses (and forward work) of heads that no longer train."""
import copy
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from lt_d2.config import add_lt_config
from lt_d2.engine import LTTrainer
from lt_d2.engine.freeze import freeze_all_but, skip_frozen_losses

from .conftest import REPO

SYNTH = os.path.join(REPO, "configs", "Synthetic-LT")
CLS = ["roi_heads.box_predictor.cls_score"]


def _model(config, trainable=CLS, skip=True, *opts):
    cfg = add_lt_config(get_cfg())
    cfg.merge_from_file(os.path.join(SYNTH, config))
    cfg.merge_from_list(["DATASETS.TRAIN", "()", "MODEL.ROI_HEADS.NUM_CLASSES", "12",
                         "MODEL.LT.TRAINABLE", "[]", *opts])
    torch.manual_seed(0)
    model = LTTrainer.build_model(cfg)  # TRAINABLE empty: nothing frozen, nothing skipped
    freeze_all_but(model, trainable)
    skipped = skip_frozen_losses(model) if skip else []
    return model, skipped


def _batch(mask=False):
    torch.manual_seed(1)
    batch = []
    for _ in range(2):
        inst = Instances((64, 64))
        inst.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 30.0, 28.0], [30.0, 20.0, 60.0, 58.0]]))
        inst.gt_classes = torch.tensor([3, 7])
        if mask:
            inst.gt_masks = BitMasks(torch.rand(2, 64, 64) > 0.5)
        batch.append({"image": torch.rand(3, 64, 64) * 255, "instances": inst,
                      "height": 64, "width": 64})
    return batch


def _train_step(model, batch, seed=5):
    torch.manual_seed(seed)
    with EventStorage():
        losses = model(copy.deepcopy(batch))
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return losses, grads


@pytest.mark.parametrize("config, expected", [
    ("decoupled/crt_faster_rcnn_tiny.yaml", ["loss_rpn_cls", "loss_rpn_loc", "loss_box_reg"]),
    ("mask_rcnn_tiny_ce.yaml", ["loss_rpn_cls", "loss_rpn_loc", "loss_box_reg", "loss_mask"]),
    ("cascade_rcnn_tiny_ce.yaml", ["loss_rpn_cls", "loss_rpn_loc", "loss_box_reg_stage0",
                                   "loss_box_reg_stage1", "loss_box_reg_stage2"]),
])
def test_frozen_heads_losses_are_skipped(config, expected):
    trainable = CLS if "cascade" not in config else [f"roi_heads.box_predictor.{k}.cls_score"
                                                     for k in range(3)]
    model, skipped = _model(config, trainable)
    assert skipped == expected
    losses, grads = _train_step(model, _batch(mask="mask" in config))
    assert not set(expected) & set(losses)
    assert all(k.startswith("loss_cls") for k in losses)  # total_loss = what is optimised
    assert all(torch.isfinite(g).all() for g in grads.values()) and grads


def test_proposals_are_those_of_the_training_mode_rpn():
    full, _ = _model("decoupled/crt_faster_rcnn_tiny.yaml", skip=False)
    lean, _ = _model("decoupled/crt_faster_rcnn_tiny.yaml")
    assert type(lean.proposal_generator).__name__ == "LossFreeRPN"
    batch = _batch()
    outs = []
    for model in (full, lean):
        images = model.preprocess_image(batch)
        gts = [b["instances"] for b in batch]
        with EventStorage(), torch.no_grad():
            proposals, losses = model.proposal_generator(images, model.backbone(images.tensor), gts)
        outs.append((proposals, losses))
    (full_props, full_losses), (lean_props, lean_losses) = outs
    assert set(full_losses) == {"loss_rpn_cls", "loss_rpn_loc"} and lean_losses == {}
    for a, b in zip(full_props, lean_props):
        assert len(a) == len(b) == 200  # POST_NMS_TOPK_TRAIN, not the test top-k (100)
        assert torch.equal(a.proposal_boxes.tensor, b.proposal_boxes.tensor)
        assert torch.equal(a.objectness_logits, b.objectness_logits)


@pytest.mark.parametrize("config", ["decoupled/crt_faster_rcnn_tiny.yaml",
                                    "mask_rcnn_tiny_ce.yaml"])
def test_trainable_gradients_are_unchanged(config):
    """Same proposals and RNG state at the ROI heads: the classifier's losses and gradients are
    bit-identical with and without the skipped box regression and mask losses."""
    mask = "mask" in config
    results = []
    for skip in (False, True):
        model, _ = _model(config, skip=skip)
        batch = _batch(mask)
        images = model.preprocess_image(batch)
        gts = [b["instances"] for b in batch]
        with EventStorage(), torch.no_grad():
            features = model.backbone(images.tensor)
            proposals, _ = model.proposal_generator(images, features, gts)
        torch.manual_seed(7)
        with EventStorage():
            _, losses = model.roi_heads(images, features, proposals, gts)
        sum(losses.values()).backward()
        cls = model.roi_heads.box_predictor.cls_score
        results.append((losses, cls.weight.grad.clone(), cls.bias.grad.clone()))
    (full, w0, b0), (lean, w1, b1) = results
    assert set(full) - set(lean) == ({"loss_box_reg", "loss_mask"} if mask else {"loss_box_reg"})
    assert torch.equal(full["loss_cls"], lean["loss_cls"])
    assert torch.equal(w0, w1) and torch.equal(b0, b1) and w0.abs().sum() > 0


def test_nothing_is_skipped_where_a_loss_reaches_a_trainable_parameter():
    _, skipped = _model("decoupled/crt_faster_rcnn_tiny.yaml", CLS + ["backbone"])
    assert skipped == []  # every head's loss reaches the backbone
    model, skipped = _model("mask_rcnn_tiny_ce.yaml", CLS + ["roi_heads.box_head"])
    assert skipped == ["loss_rpn_cls", "loss_rpn_loc", "loss_mask"]  # box head: box reg stays
    losses, _ = _train_step(model, _batch(mask=True))
    assert "loss_box_reg" in losses
    _, skipped = _model("mask_rcnn_tiny_ce.yaml",
                        CLS + ["proposal_generator", "roi_heads.mask_head"])
    assert skipped == ["loss_box_reg"]


def test_trainer_builds_stage_two_with_skipping(caplog):
    cfg = add_lt_config(get_cfg())
    cfg.merge_from_file(os.path.join(SYNTH, "decoupled", "crt_faster_rcnn_tiny.yaml"))
    cfg.merge_from_list(["DATASETS.TRAIN", "()", "MODEL.ROI_HEADS.NUM_CLASSES", "12"])
    with caplog.at_level("INFO", logger="lt_d2.engine.freeze"):
        model = LTTrainer.build_model(cfg)
    assert not model.roi_heads.box_predictor.box_reg_loss_on
    assert "skipping the losses of frozen heads" in caplog.text
    assert "loss_rpn_cls, loss_rpn_loc, loss_box_reg" in caplog.text
    copy.deepcopy(model)  # the swapped RPN class still copies (and pickles)
    import pickle

    pickle.loads(pickle.dumps(model.proposal_generator))
