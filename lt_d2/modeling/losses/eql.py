# Copyright (c) lt_d2 contributors.
"""Equalization loss (Tan et al., CVPR 2020), as in the EQLv2 authors' port."""
import torch
from detectron2.config import configurable

from .base import CLS_LOSS_REGISTRY, LTClassificationLoss, require, train_stat_args
from .utils import append_zero_background, one_hot_foreground, weighted_bce_mean


def eql_loss(logits, gt_classes, tail_mask):
    """sum_ij w_ij BCE(z_ij, y_ij) / R over K sigmoid outputs (no background column), with
    w_ij = 1 - E(i) T(j) (1 - y_ij): foreground RoIs (E = 1) do not push down tail classes
    (T = 1), except their own label.

    Args:
        logits: (R, K); gt_classes: (R,) in [0, K]; tail_mask: (K,) 1 for tail classes.
    """
    num_classes = logits.shape[1]
    targets = one_hot_foreground(gt_classes, num_classes)
    is_fg = gt_classes < num_classes
    weights = 1 - is_fg.float()[:, None] * tail_mask[None, :]
    fg_rows = torch.nonzero(is_fg).flatten()
    weights[fg_rows, gt_classes[fg_rows]] = 1  # (1 - y) = 0 at the label
    return weighted_bce_mean(logits, targets, weights)


@CLS_LOSS_REGISTRY.register()
class EQLLoss(LTClassificationLoss):
    """EQL v1 over K sigmoid logits; tail classes are those with image frequency below lambda.

    Args:
        num_classes (int): K.
        image_count (Tensor or None): (K,) training images per class.
        num_images (int): training images with annotations (the frequency's denominator).
        lambda_ (float): tail threshold lambda on image frequency (LVIS v0.5: 0.00177, v1: 0.0011).

    ``forward(logits (R, K), gt_classes (R,)) -> scalar``. Scores: sigmoid, background 0.
    """

    prior_prob = 0.001

    @configurable
    def __init__(self, *, num_classes, image_count=None, num_images=None, lambda_=0.00177):
        super().__init__(num_classes)
        self.lambda_ = lambda_
        tail = None
        if image_count is not None:
            tail = (torch.as_tensor(image_count).float() / num_images < lambda_).float()
        self.register_buffer("tail_mask", tail, persistent=False)

    @classmethod
    def from_config(cls, cfg, num_classes):
        return {
            "num_classes": num_classes,
            **train_stat_args(cfg, image_count="image_count", num_images="num_images"),
            "lambda_": cfg.MODEL.LT.EQL.LAMBDA,
        }

    @property
    def num_logits(self):
        return self.num_classes

    def forward(self, logits, gt_classes):
        return eql_loss(logits, gt_classes, require(self.tail_mask, "per-class image counts"))

    def probs(self, logits):
        return append_zero_background(logits.sigmoid())

    def extra_repr(self):
        return f"num_classes={self.num_classes}, lambda_={self.lambda_}"
