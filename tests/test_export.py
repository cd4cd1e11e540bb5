# Copyright (c) lt_d2 contributors.
"""detectron2's ROI-head / Fast R-CNN behaviour (tests/modeling/test_roi_heads.py and
test_fast_rcnn.py) with lt_d2's classes: tracing, scripting, configs without MODEL.LT."""
import copy

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.export import scripting_with_instances
from detectron2.export.torchscript_patch import patch_builtin_len
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, ImageList, Instances

from lt_d2.config import add_lt_config
from lt_d2.modeling import LTCascadeROIHeads, LTFastRCNNOutputLayers, LTROIHeads

from .test_box_predictor import LOSS_NAMES, STATS_DATASET, setup_module  # noqa: F401

SCRIPT_FIELDS = {"objectness_logits": torch.Tensor, "proposal_boxes": Boxes,
                 "pred_classes": torch.Tensor, "scores": torch.Tensor,
                 "pred_masks": torch.Tensor, "pred_boxes": Boxes}


def _predictor(loss="SoftmaxCELoss", num_classes=5):
    cfg = add_lt_config(get_cfg())
    cfg.DATASETS.TRAIN = (STATS_DATASET,)
    cfg.MODEL.LT.CLS_LOSS = loss
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    return LTFastRCNNOutputLayers(cfg, ShapeSpec(channels=8))


class _ProbsOf(torch.nn.Module):
    def __init__(self, predictor):
        super().__init__()
        self.predictor = predictor

    def forward(self, scores, boxes):
        inst = Instances((10, 10))
        inst.proposal_boxes = Boxes(boxes)
        return self.predictor.predict_probs((scores, None), [inst])


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_predict_probs_traces_for_inputs_of_another_size(loss):
    predictor = _predictor(loss, num_classes=4).eval()
    k = predictor.cls_score.out_features
    with torch.no_grad(), patch_builtin_len():
        traced = torch.jit.trace(_ProbsOf(predictor), (torch.randn(10, k), torch.rand(10, 4)))
        for n in (10, 5, 20):
            scores = torch.randn(n, k)
            (out,) = traced(scores, torch.rand(n, 4))
            assert out.shape == (n, 5)
            assert torch.allclose(out, predictor.cls_loss.probs(scores), atol=1e-6)


def test_predict_boxes_traces_for_inputs_of_another_size():
    predictor = LTFastRCNNOutputLayers(ShapeSpec(channels=8), num_classes=5,
                                       box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)))

    class Boxes_(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.predictor = predictor

        def forward(self, deltas, boxes):
            inst = Instances((10, 10))
            inst.proposal_boxes = Boxes(boxes)
            return self.predictor.predict_boxes((None, deltas), [inst])

    with torch.no_grad(), patch_builtin_len():
        traced = torch.jit.trace(Boxes_(), (torch.randn(10, 20), torch.rand(10, 4) * 5))
        for n in (5, 20):
            deltas, boxes = torch.randn(n, 20), torch.rand(n, 4) * 5
            (out,) = traced(deltas, boxes)
            assert torch.allclose(out, Boxes_()(deltas, boxes)[0])


def _heads_cfg(loss="SoftmaxCELoss"):
    cfg = add_lt_config(get_cfg())
    cfg.DATASETS.TRAIN = (STATS_DATASET,)
    cfg.MODEL.LT.CLS_LOSS = loss
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
    cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10, 10, 5, 5)
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 8
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 4
    cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.01
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.01
    return cfg


def _eval_inputs():
    torch.manual_seed(0)
    images = ImageList(torch.rand(2, 20, 30), [(10, 10), (20, 30)])
    features = {"res4": torch.rand(2, 16, 1, 2)}
    proposals = []
    for size, boxes, logits in [((10, 10), [[1, 1, 3, 3], [2, 2, 6, 6]], [0.5, 0.7]),
                                ((20, 30), [[1, 5, 2, 8], [7, 3, 10, 5]], [0.1, 0.9])]:
        p = Instances(size)
        p.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        p.objectness_logits = torch.tensor(logits)
        proposals.append(p)
    return images, features, proposals


def test_LTROIHeads_scripts_like_StandardROIHeads():
    from detectron2.export.torchscript_patch import freeze_training_mode, patch_instances

    heads = LTROIHeads(_heads_cfg(), {"res4": ShapeSpec(channels=16, stride=16)}).eval()
    images, features, proposals = _eval_inputs()
    with torch.no_grad():
        expected, _ = heads(images, features, copy.deepcopy(proposals))
    with freeze_training_mode(heads), patch_instances(SCRIPT_FIELDS) as new_instances:
        scripted = torch.jit.script(heads)
        got, _ = scripted(images, features, [new_instances.from_instances(p) for p in proposals])
    assert len(expected) == len(got) == 2
    for a, b in zip(expected, got):
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)
        assert torch.equal(a.pred_masks, b.pred_masks)
    assert len(expected[0]) > 0
    # detectron2.export's helper works on the heads as well
    scripting_with_instances(heads, SCRIPT_FIELDS)


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_scripting_scores_with_every_loss_or_a_clear_refusal(loss):
    heads = LTROIHeads(_heads_cfg(loss), {"res4": ShapeSpec(channels=16, stride=16)}).eval()
    try:
        scripted = scripting_with_instances(heads, SCRIPT_FIELDS)
    except RuntimeError as e:
        assert loss != "SoftmaxCELoss"
        assert f"cannot be scripted with {loss}" in str(e) and "tracing" in str(e)
        return
    logits = torch.randn(6, heads.box_predictor.cls_score.out_features)
    assert torch.allclose(scripted.box_predictor.cls_loss.probs(logits),
                          heads.box_predictor.cls_loss.probs(logits))


def test_a_detector_with_lt_heads_traces_with_detectron2_export():
    import os

    from detectron2.export import TracingAdapter
    from detectron2.modeling import build_model

    from .conftest import REPO

    cfg = add_lt_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, "configs", "Synthetic-LT", "faster_rcnn_tiny_ce.yaml"))
    cfg.merge_from_list(["DATASETS.TRAIN", "()", "MODEL.ROI_HEADS.NUM_CLASSES", "12",
                         "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.rand(3, 64, 64) * 255
    adapter = TracingAdapter(model, [{"image": image}], inference_func=lambda m, inputs:
                             m.inference(inputs, do_postprocess=False))
    with torch.no_grad():
        traced = torch.jit.trace(adapter, adapter.flattened_inputs)
        other = torch.rand(3, 64, 96) * 255
        boxes_traced = traced(other)[0]
        expected = model.inference([{"image": other}], do_postprocess=False)[0]
    assert torch.allclose(boxes_traced, expected.pred_boxes.tensor, atol=1e-4)
    assert len(expected) > 0


@pytest.mark.parametrize("build", [
    lambda cfg, shape: LTROIHeads(cfg, shape),
    lambda cfg, shape: LTCascadeROIHeads(cfg, shape),
    lambda cfg, shape: LTFastRCNNOutputLayers(cfg, ShapeSpec(channels=16)),
])
def test_config_without_lt_keys_says_to_call_add_lt_config(build):
    cfg = get_cfg()
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    with pytest.raises(KeyError, match=r"lt_d2\.config\.add_lt_config\(cfg\)"):
        build(cfg, {"res4": ShapeSpec(channels=16, stride=16)})
