# Copyright (c) lt_d2 contributors.
"""The box predictor of lt_d2's ROI heads: detectron2's, with a pluggable classification loss."""
from typing import List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.modeling.roi_heads.fast_rcnn import _log_classification_stats, fast_rcnn_inference
from detectron2.structures import Instances
from torch import nn

from .calibration import build_score_calibration
from .losses import SoftmaxCELoss, build_cls_loss
from .losses.utils import upcast


class CosineLinear(nn.Linear):
    """z = scale * <x / |x|, w / |w|> + b (the normalised linear layer of the Seesaw configs).

    Same parameters (``weight``, ``bias``) as ``nn.Linear``, so checkpoints move between the two.
    The norms are taken in float32 (features may be float16 / bfloat16 under autocast, where
    the eps would vanish and the sum of squares lose precision); the product follows autocast.
    """

    def __init__(self, in_features, out_features, scale=20.0, eps=1e-6):
        super().__init__(in_features, out_features)
        self.scale, self.eps = scale, eps

    def forward(self, x):
        x = upcast(x)
        x = x / (x.norm(dim=1, keepdim=True) + self.eps)
        w = self.weight / (self.weight.norm(dim=1, keepdim=True) + self.eps)
        return F.linear(x * self.scale, w, self.bias)

    def extra_repr(self):
        return super().extra_repr() + f", scale={self.scale}"


class LWSLinear(nn.Linear):
    """Learnable weight scaling (decoupling paper, Kang et al., ICLR 2020): z = x (W * s)^T + b
    with one scale per output, s = 1 at first. ``weight``/``bias`` keep nn.Linear's names, so a
    stage-one classifier loads into it; stage two trains only ``scales``."""

    def __init__(self, in_features, out_features):
        super().__init__(in_features, out_features)
        self.scales = nn.Parameter(torch.ones(out_features, 1))

    def forward(self, x):
        return F.linear(x, self.weight * self.scales, self.bias)


def build_classifier(kind, in_features, out_features, cosine_scale=20.0):
    """The classifier layer ``kind``, initialised as detectron2's cls_score (N(0, 0.01), 0)."""
    if kind == "linear":
        layer = nn.Linear(in_features, out_features)
    elif kind == "cosine":
        layer = CosineLinear(in_features, out_features, cosine_scale)
    elif kind == "lws":
        layer = LWSLinear(in_features, out_features)
    else:
        raise ValueError(f"Unknown MODEL.LT.CLASSIFIER={kind!r}; use 'linear', 'cosine' or 'lws'.")
    nn.init.normal_(layer.weight, std=0.01)
    nn.init.constant_(layer.bias, 0)
    return layer


def require_lt_config(cfg, what):
    """Raise, with the fix, if ``cfg`` lacks lt_d2's keys (``MODEL.LT``, ``INPUT.LT``)."""
    if "LT" not in cfg.MODEL:
        raise KeyError(f"{what} reads lt_d2's config keys (MODEL.LT), which this config lacks: "
                       "call lt_d2.config.add_lt_config(cfg) on it before building the model.")


class LTFastRCNNOutputLayers(FastRCNNOutputLayers):
    """detectron2's ``FastRCNNOutputLayers`` whose classification loss is a module.

    The loss (``cls_loss``, an :class:`~lt_d2.modeling.losses.LTClassificationLoss`) decides how
    many logits ``cls_score`` outputs, how the classifier bias starts, the classification loss
    and how logits become (R, K+1) scores at inference; the predictor never branches on which
    loss it holds. With the default (``SoftmaxCELoss``, linear classifier) it computes exactly
    what detectron2's predictor computes and has the same parameters.

    Args:
        cls_loss (LTClassificationLoss or None): None means softmax cross-entropy.
        classifier (str): "linear", "cosine" or "lws" (learnable per-class weight scales).
        cosine_scale (float): the cosine temperature.
        score_calibration (nn.Module or None): applied to the (R, K+1) scores of each image at
            inference, before the score threshold, NMS and the per-image cap
            (:class:`~lt_d2.modeling.calibration.ScoreCalibration`, ``TEST.LT.CALIBRATION``).
        Other arguments: those of ``FastRCNNOutputLayers``.

    Attributes:
        box_reg_loss_on (bool): False leaves ``loss_box_reg`` out of :meth:`losses`. Set by
            :func:`lt_d2.engine.freeze.skip_frozen_losses` when no parameter the loss reaches
            trains (decoupled stage two), so that the logged total is the optimised loss.

    Export: ``predict_probs`` traces for inputs of any size (the split sizes are traced, not
    baked in) and the predictor scripts with the losses whose ``probs`` TorchScript compiles
    (softmax CE, the default); with another loss scripting raises an error that says so.
    """

    calibrated: torch.jit.Final[bool]

    @configurable
    def __init__(self, input_shape, *, cls_loss=None, classifier="linear", cosine_scale=20.0,
                 score_calibration=None, **kwargs):
        super().__init__(input_shape, **kwargs)
        if cls_loss is None:
            cls_loss = SoftmaxCELoss(num_classes=self.num_classes)
        self.cls_loss = cls_loss
        if self.cls_loss.num_classes != self.num_classes:
            raise ValueError(f"cls_loss is for {self.cls_loss.num_classes} classes, the predictor "
                             f"for {self.num_classes}.")
        if classifier != "linear" or self.cls_loss.num_logits != self.cls_score.out_features:
            self.cls_score = build_classifier(
                classifier, self.cls_score.in_features, self.cls_loss.num_logits, cosine_scale)
        self.cls_loss.init_classifier_(self.cls_score)
        self.box_reg_loss_on = True
        # always a module (TorchScript compiles the branch); applied only if ``calibrated``
        self.calibrated = score_calibration is not None
        self.score_calibration = score_calibration if self.calibrated else nn.Identity()

    @classmethod
    def from_config(cls, cfg, input_shape):
        require_lt_config(cfg, "LTFastRCNNOutputLayers")
        ret = super().from_config(cfg, input_shape)
        head = cfg.MODEL.ROI_BOX_HEAD
        if head.get("USE_SIGMOID_CE", False) or head.get("USE_FED_LOSS", False):
            raise ValueError(
                "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE / USE_FED_LOSS do not apply to lt_d2's ROI "
                "heads; set MODEL.LT.CLS_LOSS to SigmoidCELoss or FederatedLoss instead.")
        ret["cls_loss"] = build_cls_loss(cfg, ret["num_classes"])
        ret["classifier"] = cfg.MODEL.LT.CLASSIFIER
        ret["cosine_scale"] = cfg.MODEL.LT.COSINE_SCALE
        ret["score_calibration"] = build_score_calibration(cfg, ret["cls_loss"])
        return ret

    def losses(self, predictions, proposals, extra_classification=None):
        """Classification loss from ``cls_loss`` (one or more ``loss_*`` entries) plus
        detectron2's box regression loss (unless ``box_reg_loss_on`` is False), each scaled by
        ``loss_weight``.

        Args:
            extra_classification (tuple[Tensor, Tensor] or None): (logits, labels) of extra
                samples for the classification loss only, appended after the RoIs (BACL's
                hallucinated features, passed by :class:`~lt_d2.modeling.LTROIHeads`).
        """
        scores, proposal_deltas = predictions
        gt_classes = (
            cat([p.gt_classes for p in proposals], dim=0)
            if len(proposals)
            else torch.empty(0, dtype=torch.long, device=scores.device)
        )
        _log_classification_stats(self.cls_loss.probs(scores.detach()), gt_classes)
        cls_scores, cls_gt = scores, gt_classes
        if extra_classification is not None:
            extra_logits, extra_labels = extra_classification
            cls_scores = torch.cat([scores, extra_logits])
            cls_gt = torch.cat([gt_classes, extra_labels])
        cls_losses = self.cls_loss(cls_scores, cls_gt)
        losses = dict(cls_losses) if isinstance(cls_losses, dict) else {"loss_cls": cls_losses}
        if self.box_reg_loss_on:
            losses["loss_box_reg"] = self._box_reg_loss(proposal_deltas, proposals, gt_classes)
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    def _box_reg_loss(self, proposal_deltas, proposals, gt_classes):
        """detectron2's box regression loss (proposals without a gt box regress onto themselves)."""
        if len(proposals):
            proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
            gt_boxes = cat(
                [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals],
                dim=0,
            )
        else:
            proposal_boxes = gt_boxes = torch.empty((0, 4), device=proposal_deltas.device)
        return self.box_reg_loss(proposal_boxes, gt_boxes, proposal_deltas, gt_classes)

    def predict_probs(self, predictions: Tuple[torch.Tensor, torch.Tensor],
                      proposals: List[Instances]):
        """(R_i, K+1) scores per image, background last, as the loss defines them."""
        scores = predictions[0]
        # __len__, not len(): a traced graph keeps the sizes symbolic (len() makes them ints)
        num_inst_per_image = [p.__len__() for p in proposals]
        return self.cls_loss.probs(scores).split(num_inst_per_image, dim=0)

    def calibrate_scores(self, scores: List[torch.Tensor]) -> List[torch.Tensor]:
        """Per-image (R_i, K+1) scores after ``score_calibration`` (unchanged without one)."""
        if not self.calibrated:
            return scores
        return [self.score_calibration(s) for s in scores]

    def inference(self, predictions: Tuple[torch.Tensor, torch.Tensor],
                  proposals: List[Instances]):
        """detectron2's inference, with the scores calibrated before the score threshold, NMS
        and the per-image cap."""
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.calibrate_scores(self.predict_probs(predictions, proposals))
        image_shapes = [x.image_size for x in proposals]
        return fast_rcnn_inference(boxes, scores, image_shapes, self.test_score_thresh,
                                   self.test_nms_thresh, self.test_topk_per_image)

    def __prepare_scriptable__(self):
        """Called by ``torch.jit.script``: refuse, with the reason, a loss whose scores
        TorchScript cannot compile (tracing, ``detectron2.export.TracingAdapter``, may work)."""
        try:
            torch.jit.script(_ScoresOf(self.cls_loss))
        except Exception as e:
            raise RuntimeError(
                f"lt_d2's box predictor cannot be scripted with {type(self.cls_loss).__name__}: "
                f"TorchScript cannot compile its probs() ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[0]}). Export by tracing (torch.jit.trace / "
                "detectron2.export.TracingAdapter) instead, or script a model with "
                "MODEL.LT.CLS_LOSS SoftmaxCELoss.") from e
        return self


class _ScoresOf(nn.Module):
    """The scores of ``loss`` as a module's forward: what scripting the predictor compiles."""

    def __init__(self, loss):
        super().__init__()
        self.loss = loss

    def forward(self, logits):
        return self.loss.probs(logits)


def replace_box_predictor(cfg, stock_predictor, input_shape):
    """Build an ``LTFastRCNNOutputLayers`` in place of detectron2's ``stock_predictor``.

    The new predictor is built without consuming the global RNG and takes the stock predictor's
    weights wherever the shapes agree (then the loss's bias prior), so with the default loss a
    model with lt_d2's ROI heads is initialised exactly like detectron2's: same parameters, and
    the same RNG stream for the modules built after it.
    """
    with torch.random.fork_rng(devices=[]):
        predictor = LTFastRCNNOutputLayers(
            cfg, input_shape, box2box_transform=stock_predictor.box2box_transform
        )
    own_state = predictor.state_dict()
    matching = {
        k: v for k, v in stock_predictor.state_dict().items()
        if k in own_state and own_state[k].shape == v.shape
    }
    predictor.load_state_dict(matching, strict=False)
    predictor.cls_loss.init_classifier_(predictor.cls_score)
    return predictor
