# Copyright (c) lt_d2 contributors.
"""Federated loss (Zhou et al., "Probabilistic two-stage detection", 2021; detectron2 main)."""
import torch
from detectron2.config import configurable

from .base import CLS_LOSS_REGISTRY, LTClassificationLoss, require, train_stat_args
from .utils import one_hot_foreground, weighted_bce_mean


def federated_classes(gt_classes, class_weights, num_fed_classes):
    """The classes that get a loss: those in the batch, plus negatives drawn without
    replacement with probability proportional to ``class_weights`` until ``num_fed_classes``.

    As in detectron2, the background label counts toward ``num_fed_classes`` when present.
    With fewer candidate classes than that (small datasets, K <= ``num_fed_classes``) every
    candidate is taken; when none is left (every class already in the batch) nothing is drawn,
    so the RNG is only used when there is a choice to make. Returns a (K,) 0/1 float mask.
    """
    num_classes = class_weights.shape[0]
    present = torch.unique(gt_classes)
    chosen = present
    if len(present) < num_fed_classes:
        prob = torch.cat([class_weights.float(), class_weights.new_zeros(1, dtype=torch.float)])
        prob[present] = 0
        candidates = int((prob > 0).sum())
        num_extra = min(num_fed_classes - len(present), candidates)
        if num_extra == candidates:  # all of them: no draw needed
            extra = torch.nonzero(prob > 0).flatten()
        else:
            extra = torch.multinomial(prob, num_extra, replacement=False)
        chosen = torch.cat([present, extra])
    mask = class_weights.new_zeros(num_classes + 1, dtype=torch.float)
    mask[chosen] = 1
    return mask[:num_classes]


def federated_loss(logits, gt_classes, class_weights, num_fed_classes=50):
    """sum BCE / R over the K class columns of the classes :func:`federated_classes` picks
    (the background column, the last of the K+1, gets no loss); 0 for an empty batch, where
    nothing is drawn from the RNG (as detectron2).

    Args:
        logits: (R, K+1); gt_classes: (R,) in [0, K]; class_weights: (K,) draw weights.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    num_classes = logits.shape[1] - 1
    targets = one_hot_foreground(gt_classes, num_classes)
    mask = federated_classes(gt_classes, class_weights, num_fed_classes)
    return weighted_bce_mean(logits[:, :-1], targets, mask[None, :])


@CLS_LOSS_REGISTRY.register()
class FederatedLoss(LTClassificationLoss):
    """Sigmoid BCE on the K class columns, restricted to the federated class set; the background
    column of the K+1 logits gets no loss and is dropped at inference.

    Args:
        num_classes (int): K.
        image_count (Tensor or None): (K,) training images per class.
        freq_weight_power (float): negatives are drawn with weight image_count ** power (0.5).
        num_fed_classes (int): size of the class set per batch (50).

    ``forward(logits (R, K+1), gt_classes (R,)) -> scalar``.
    """

    scores_have_background = False  # the background logit never gets a loss

    @configurable
    def __init__(self, *, num_classes, image_count=None, freq_weight_power=0.5, num_fed_classes=50):
        super().__init__(num_classes)
        self.freq_weight_power = freq_weight_power
        self.num_fed_classes = num_fed_classes
        weights = (None if image_count is None
                   else torch.as_tensor(image_count).float() ** freq_weight_power)
        self.register_buffer("class_weights", weights, persistent=False)

    @classmethod
    def from_config(cls, cfg, num_classes, class_stats=None):
        head = cfg.MODEL.ROI_BOX_HEAD
        return {
            "num_classes": num_classes,
            **train_stat_args(cfg, class_stats, image_count="image_count"),
            "freq_weight_power": head.FED_LOSS_FREQ_WEIGHT_POWER,
            "num_fed_classes": head.FED_LOSS_NUM_CLASSES,
        }

    def forward(self, logits, gt_classes):
        weights = require(self.class_weights, "per-class image counts")
        return federated_loss(logits, gt_classes, weights, self.num_fed_classes)

    def probs(self, logits):
        return logits.sigmoid()

    def extra_repr(self):
        return f"num_classes={self.num_classes}, num_fed_classes={self.num_fed_classes}, " \
               f"freq_weight_power={self.freq_weight_power}"
