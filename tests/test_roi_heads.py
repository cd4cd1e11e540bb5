# Copyright (c) lt_d2 contributors.
"""With every long-tail option off, lt_d2's ROI heads equal detectron2's."""
import copy

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.proposal_generator.build import build_proposal_generator
from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads
from detectron2.structures import BitMasks, Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

from lt_d2.config import add_lt_config
from lt_d2.modeling import LTCascadeROIHeads, LTFastRCNNOutputLayers, LTROIHeads


def _cfg(cascade=False):
    cfg = add_lt_config(get_cfg())
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
    cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10, 10, 5, 5)
    cfg.MODEL.MASK_ON = True
    if cascade:
        cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    return cfg


def _inputs(channels=1024):
    """The inputs of detectron2's tests/modeling/test_roi_heads.py (after manual_seed(121))."""
    images = ImageList(torch.rand(2, 20, 30), [(10, 10), (20, 30)])
    features = {"res4": torch.rand(2, channels, 1, 2)}
    shape = {"res4": ShapeSpec(channels=channels, stride=16)}
    gts = []
    for boxes, classes in [([[1, 1, 3, 3], [2, 2, 6, 6]], [2, 1]),
                           ([[1, 5, 2, 8], [7, 3, 10, 5]], [1, 2])]:
        inst = Instances((15, 15))
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.gt_classes = torch.tensor(classes)
        inst.gt_masks = BitMasks(torch.rand((2, 15, 15)) > 0.5)
        gts.append(inst)
    return images, features, shape, gts


def test_detectron2_upstream_loss_values():
    torch.manual_seed(121)
    cfg = _cfg()
    images, features, shape, gts = _inputs()
    rpn = build_proposal_generator(cfg, shape)
    roi_heads = LTROIHeads(cfg, shape)
    assert isinstance(roi_heads.box_predictor, LTFastRCNNOutputLayers)
    with EventStorage():
        proposals, losses = rpn(images, features, gts)
        _, detector_losses = roi_heads(images, features, proposals, gts)
    losses.update(detector_losses)
    expected = {  # detectron2 v0.6 tests/modeling/test_roi_heads.py
        "loss_cls": 4.5253729820251465,
        "loss_box_reg": 0.009785720147192478,
        "loss_mask": 0.693184494972229,
        "loss_rpn_cls": 0.08186662942171097,
        "loss_rpn_loc": 0.1104838103055954,
    }
    for name, value in expected.items():
        assert torch.allclose(losses[name], torch.tensor(value)), f"Losses changed: {losses}"


def _build(cls, cfg, shape, seed):
    torch.manual_seed(seed)
    module = cls(cfg, shape)
    return module, torch.random.get_rng_state()


@pytest.mark.parametrize("stock_cls, lt_cls, cascade",
                         [(StandardROIHeads, LTROIHeads, False),
                          (CascadeROIHeads, LTCascadeROIHeads, True)])
def test_identical_to_detectron2_heads(stock_cls, lt_cls, cascade):
    cfg = _cfg(cascade)
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 128  # small heads: the test is about equality, not size
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 16
    torch.manual_seed(0)
    images, features, shape, gts = _inputs(channels=32)
    torch.manual_seed(1)
    proposal_gen = build_proposal_generator(cfg, shape)
    stock, stock_rng = _build(stock_cls, cfg, shape, seed=5)
    ours, our_rng = _build(lt_cls, cfg, shape, seed=5)
    # same initialisation, same RNG stream afterwards, same checkpoint keys
    assert torch.equal(stock_rng, our_rng)
    stock_state, our_state = stock.state_dict(), ours.state_dict()
    assert list(stock_state) == list(our_state)
    assert all(torch.equal(stock_state[k], our_state[k]) for k in stock_state)

    def train_step(module):
        torch.manual_seed(3)
        with EventStorage():
            proposals, _ = proposal_gen(images, features, copy.deepcopy(gts))
            _, losses = module(images, features, proposals, copy.deepcopy(gts))
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        return losses, grads

    stock_losses, stock_grads = train_step(stock)
    our_losses, our_grads = train_step(ours)
    assert stock_losses.keys() == our_losses.keys()
    assert all(torch.equal(stock_losses[k], our_losses[k]) for k in stock_losses)
    assert stock_grads.keys() == our_grads.keys()
    assert all(torch.equal(stock_grads[k], our_grads[k]) for k in stock_grads)

    stock.eval(), ours.eval(), proposal_gen.eval()
    with torch.no_grad():
        proposals, _ = proposal_gen(images, features)
        stock_out, _ = stock(images, features, proposals)
        our_out, _ = ours(images, features, proposals)
    for a, b in zip(stock_out, our_out):
        assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.pred_masks, b.pred_masks)
