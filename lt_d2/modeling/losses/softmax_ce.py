# Copyright (c) lt_d2 contributors.
"""Softmax cross-entropy over K+1 logits: detectron2's own Fast R-CNN classification loss."""
from detectron2.config import configurable
from detectron2.layers import cross_entropy

from .base import CLS_LOSS_REGISTRY, LTClassificationLoss


@CLS_LOSS_REGISTRY.register()
class SoftmaxCE(LTClassificationLoss):
    """Mean softmax cross-entropy over all R sampled RoIs (background included).

    ``forward(logits (R, K+1), gt_classes (R,)) -> scalar``; identical to detectron2's loss_cls.
    """

    @configurable
    def __init__(self, *, num_classes):
        super().__init__(num_classes)

    @classmethod
    def from_config(cls, cfg, num_classes):
        return {"num_classes": num_classes}

    def forward(self, logits, gt_classes):
        return cross_entropy(logits, gt_classes, reduction="mean")
