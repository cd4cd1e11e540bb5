# Copyright (c) lt_d2 contributors.
"""The box predictor with every loss, in Faster, Mask and Cascade R-CNN ROI heads."""
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import BitMasks, Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

from lt_d2.config import add_lt_config
from lt_d2.data.class_stats import ClassStats, set_class_stats
from lt_d2.modeling import CosineLinear, LTFastRCNNOutputLayers
from lt_d2.modeling.losses import CLS_LOSS_REGISTRY

from .test_losses import make_losses

LOSS_NAMES = sorted(k for k, _ in CLS_LOSS_REGISTRY)


def test_detectron2_upstream_fast_rcnn_values():
    """detectron2's tests/modeling/test_fast_rcnn.py::test_fast_rcnn, with lt_d2's predictor."""
    torch.manual_seed(132)
    predictor = LTFastRCNNOutputLayers(
        ShapeSpec(channels=8), box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)),
        num_classes=5)
    predictions = predictor(torch.rand(2, 8))
    proposal = Instances((10, 10))
    proposal.proposal_boxes = Boxes(torch.tensor([[0.8, 1.1, 3.2, 2.8], [2.3, 2.5, 7, 8]]))
    proposal.gt_boxes = Boxes(torch.tensor([[1, 1, 3, 3], [2, 2, 6, 6]], dtype=torch.float32))
    proposal.gt_classes = torch.tensor([1, 2])
    with EventStorage():
        losses = predictor.losses(predictions, [proposal])
    assert torch.allclose(losses["loss_cls"], torch.tensor(1.7951188087))
    assert torch.allclose(losses["loss_box_reg"], torch.tensor(4.0357131958))


@pytest.mark.parametrize("name", list(make_losses()))
def test_empty_batch_gives_zero_losses_with_gradients(name):
    loss = make_losses()[name]
    predictor = LTFastRCNNOutputLayers(
        ShapeSpec(channels=16), box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)),
        num_classes=4, cls_loss=loss)
    assert predictor.cls_score.out_features == loss.num_logits
    logits = torch.randn(0, loss.num_logits, requires_grad=True)
    deltas = torch.randn(0, 16, requires_grad=True)
    with EventStorage():
        losses = predictor.losses((logits, deltas), [])
    sum(losses.values()).backward()
    assert all(v.item() == 0 for v in losses.values())
    assert logits.grad is not None and deltas.grad is not None
    instances, _ = predictor.inference((logits, deltas), [])
    assert instances == []


STATS_DATASET = "lt_test_class_stats_4"


def setup_module():
    """Training statistics of 4 classes in metadata, where the losses read them."""
    set_class_stats(STATS_DATASET, ClassStats(
        image_count=np.array([300, 40, 5, 1]), instance_count=np.array([900, 60, 9, 1]),
        frequency=np.array(["f", "c", "r", "r"]), num_images=1000))


def _cfg(loss, arch):
    cfg = add_lt_config(get_cfg())
    cfg.DATASETS.TRAIN = (STATS_DATASET,)
    cfg.MODEL.LT.CLS_LOSS = loss
    cfg.MODEL.ROI_HEADS.NAME = "LTCascadeROIHeads" if arch == "cascade" else "LTROIHeads"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 4
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = arch == "cascade"
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 8
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 1
    cfg.MODEL.MASK_ON = arch == "mask"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    return cfg


def _proposals_and_targets():
    gts, proposals = [], []
    for _ in range(2):
        gt = Instances((32, 32))
        gt.gt_boxes = Boxes(torch.tensor([[2.0, 2.0, 12.0, 14.0], [15.0, 10.0, 30.0, 28.0]]))
        gt.gt_classes = torch.tensor([1, 3])
        gt.gt_masks = BitMasks(torch.rand(2, 32, 32) > 0.5)
        gts.append(gt)
        prop = Instances((32, 32))
        boxes = torch.rand(20, 4) * 16
        prop.proposal_boxes = Boxes(torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:] + 2], 1))
        prop.objectness_logits = torch.rand(20)
        proposals.append(prop)
    return proposals, gts


@pytest.mark.parametrize("arch", ["faster", "mask", "cascade"])
@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_every_loss_trains_and_infers_in_every_architecture(loss, arch):
    torch.manual_seed(0)
    cfg = _cfg(loss, arch)
    shape = {"res4": ShapeSpec(channels=8, stride=16)}
    roi_heads = build_roi_heads(cfg, shape)
    features = {"res4": torch.rand(2, 8, 2, 2)}
    images = ImageList(torch.rand(2, 3, 32, 32), [(32, 32), (32, 32)])
    proposals, gts = _proposals_and_targets()
    with EventStorage():
        _, losses = roi_heads(images, features, proposals, gts)
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)
    assert all(k.startswith("loss_") for k in losses)
    roi_heads.eval()
    with torch.no_grad():
        instances, _ = roi_heads(images, features, proposals)
    assert all((i.pred_classes < 4).all() and (i.scores <= 1).all() for i in instances)
    if arch == "mask":
        assert all(i.has("pred_masks") for i in instances)


def test_loss_state_is_in_the_checkpoint_keys():
    cfg = _cfg("EQLv2Loss", "cascade")
    roi_heads = build_roi_heads(cfg, {"res4": ShapeSpec(channels=8, stride=16)})
    keys = set(roi_heads.state_dict())
    assert {f"box_predictor.{k}.cls_loss.pos_grad" for k in range(3)} <= keys
    assert {f"box_predictor.{k}.cls_score.weight" for k in range(3)} <= keys


def test_cosine_classifier_and_seesaw_logits():
    cfg = _cfg("SeesawLoss", "faster")
    cfg.MODEL.LT.CLASSIFIER = "cosine"
    predictor = build_roi_heads(cfg, {"res4": ShapeSpec(channels=8, stride=16)}).box_predictor
    assert isinstance(predictor.cls_score, CosineLinear)
    assert predictor.cls_score.out_features == 4 + 2
    x = torch.randn(3, predictor.cls_score.in_features)
    logits = predictor.cls_score(x)
    expected = 20 * torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(
        predictor.cls_score.weight, dim=1).t() + predictor.cls_score.bias
    assert torch.allclose(logits, expected, atol=1e-4)


def test_sigmoid_losses_start_from_their_prior_bias():
    predictor = build_roi_heads(_cfg("EQLv2Loss", "faster"),
                                {"res4": ShapeSpec(channels=8, stride=16)}).box_predictor
    assert torch.allclose(predictor.cls_score.bias, torch.full((5,), -6.9067547))


def test_unknown_loss_lists_the_registered_ones():
    with pytest.raises(KeyError, match="Registered losses: ACSLLoss"):
        build_roi_heads(_cfg("Nope", "faster"), {"res4": ShapeSpec(channels=8, stride=16)})
