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
    """EQL v1 over K sigmoid logits; tail classes are the rare ones by ``frequency``.

    Args:
        num_classes (int): K.
        image_count (Tensor or None): (K,) training images per class ("image").
        num_images (int): training images with annotations (the "image" frequency's denominator).
        instance_count (Tensor or None): (K,) training instances per class ("instance").
        lambda_ (float): the tail threshold lambda.
        frequency (str): what lambda thresholds. "image": class j is tail if
            image_count[j] / num_images < lambda (LVIS v0.5: 0.00177, v1: 0.0011); "instance":
            if instance_count[j] < lambda (the official OpenImages EQL config: 1652).

    ``forward(logits (R, K), gt_classes (R,)) -> scalar``. Scores: sigmoid, background 0.
    """

    prior_prob = 0.001
    scores_have_background = False  # K sigmoids, a background score of 0 appended

    FREQUENCIES = ("image", "instance")

    @configurable
    def __init__(self, *, num_classes, image_count=None, num_images=None, instance_count=None,
                 lambda_=0.00177, frequency="image"):
        super().__init__(num_classes)
        if frequency not in self.FREQUENCIES:
            raise ValueError(f"Unknown MODEL.LT.EQL.FREQUENCY={frequency!r}; use one of "
                             f"{', '.join(map(repr, self.FREQUENCIES))}.")
        self.lambda_, self.frequency = lambda_, frequency
        tail = None
        if frequency == "image" and image_count is not None:
            tail = (torch.as_tensor(image_count).float() / num_images < lambda_).float()
        elif frequency == "instance" and instance_count is not None:
            tail = (torch.as_tensor(instance_count).float() < lambda_).float()
        self.register_buffer("tail_mask", tail, persistent=False)

    @classmethod
    def from_config(cls, cfg, num_classes, class_stats=None):
        return {
            "num_classes": num_classes,
            **train_stat_args(cfg, class_stats, image_count="image_count", num_images="num_images",
                              instance_count="instance_count"),
            "lambda_": cfg.MODEL.LT.EQL.LAMBDA,
            "frequency": cfg.MODEL.LT.EQL.FREQUENCY,
        }

    @property
    def num_logits(self):
        return self.num_classes

    def forward(self, logits, gt_classes):
        return eql_loss(logits, gt_classes,
                        require(self.tail_mask, f"per-class {self.frequency} counts"))

    def probs(self, logits):
        return append_zero_background(logits.sigmoid())

    def extra_repr(self):
        return (f"num_classes={self.num_classes}, lambda_={self.lambda_}, "
                f"frequency={self.frequency!r}")
