# Copyright (c) lt_d2 contributors.
"""Softmax cross-entropy over K+1 logits: detectron2's own Fast R-CNN classification loss."""
from detectron2.layers import cross_entropy

from .base import CLS_LOSS_REGISTRY, LTClassificationLoss


@CLS_LOSS_REGISTRY.register()
class SoftmaxCE(LTClassificationLoss):
    """Mean softmax cross-entropy over all R sampled RoIs (background included).

    ``forward(logits (R, K+1), gt_classes (R,)) -> scalar``; identical to detectron2's loss_cls.
    """

    scores_have_background = True  # (TEST.LT.CALIBRATION applies)

    def forward(self, logits, gt_classes):
        return cross_entropy(logits, gt_classes, reduction="mean")
