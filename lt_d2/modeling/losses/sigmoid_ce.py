# Copyright (c) lt_d2 contributors.
"""Sigmoid cross-entropy over K class outputs plus one objectness output (EQLv2 / BACL stage 1)."""

from .base import CLS_LOSS_REGISTRY, LTClassificationLoss
from .utils import one_hot, sigmoid_with_objectness, weighted_bce_mean


def sigmoid_ce_loss(logits, gt_classes):
    """sum_ij BCE(z_ij, y_ij) / R with y the one-hot of the label over all columns.

    Args:
        logits: (R, K+1); the last column is objectness (target 1 for background RoIs).
        gt_classes: (R,) in [0, K].
    """
    return weighted_bce_mean(logits, one_hot(gt_classes, logits.shape[1]))


@CLS_LOSS_REGISTRY.register()
class SigmoidCELoss(LTClassificationLoss):
    """K+1 independent sigmoids (the last one objectness); score of class c is
    sigmoid(z_c) * (1 - sigmoid(z_K)). Bias starts at the prior 0.001, as in EQLv2 and BACL.

    ``forward(logits (R, K+1), gt_classes (R,)) -> scalar``.
    """

    prior_prob = 0.001

    def forward(self, logits, gt_classes):
        return sigmoid_ce_loss(logits, gt_classes)

    def probs(self, logits):
        return sigmoid_with_objectness(logits)
