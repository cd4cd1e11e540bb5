# Copyright (c) lt_d2 contributors.
"""Softmax cross-entropy over K+1 logits: detectron2's own Fast R-CNN classification loss."""
from detectron2.layers import cross_entropy

from .base import CLS_LOSS_REGISTRY, LTClassificationLoss


def softmax_ce_loss(logits, gt_classes):
    """Mean softmax cross-entropy over all R RoIs (background, label K, included), as
    detectron2's ``loss_cls`` (0 for an empty batch).

    Args:
        logits: (R, K+1), the background last; gt_classes: (R,) in [0, K].
    """
    return cross_entropy(logits, gt_classes, reduction="mean")


@CLS_LOSS_REGISTRY.register()
class SoftmaxCELoss(LTClassificationLoss):
    """Softmax cross-entropy, the default: identical to detectron2's loss_cls.

    ``forward(logits (R, K+1), gt_classes (R,)) -> scalar``. Scores: softmax.
    """

    scores_have_background = True  # (TEST.LT.CALIBRATION applies)

    def forward(self, logits, gt_classes):
        return softmax_ce_loss(logits, gt_classes)
