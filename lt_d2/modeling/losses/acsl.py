# Copyright (c) lt_d2 contributors.
"""Adaptive class suppression loss (Wang et al., CVPR 2021), as in the official code."""
import torch
from detectron2.config import configurable

from ...grouping import LVIS_FREQUENCIES
from .base import CLS_LOSS_REGISTRY, LTClassificationLoss, require, train_stat_args
from .utils import one_hot, weighted_bce_mean

# Share of background RoIs on which the classes of an LVIS frequency get a negative loss.
BACKGROUND_ROW_SHARE = {"r": 0.01, "c": 0.1, "f": 1.0}


def acsl_loss(logits, gt_classes, frequency_masks, score_thresh=0.7):
    """sum_ij w_ij BCE(z_ij, y_ij) / R over K+1 independent sigmoids (the background column
    included, y its one-hot target), with the weights of :func:`acsl_weights`.

    Args:
        logits: (R, K+1); gt_classes: (R,) in [0, K];
        frequency_masks: dict "r"/"c"/"f" -> (K,) bool masks of the LVIS frequencies.
    """
    weights = acsl_weights(logits, gt_classes, frequency_masks, score_thresh)
    return weighted_bce_mean(logits, one_hot(gt_classes, logits.shape[1]), weights)


def acsl_weights(logits, gt_classes, frequency_masks, score_thresh):
    """ACSL's (R, K+1) 0/1 weights; the background column is the last one.

    Foreground RoIs: every column whose sigmoid score reaches ``score_thresh``, plus the label.
    Background RoIs: the background column; all frequent classes; common classes on 10% and rare
    classes on 1% of the background RoIs (one random row subset per frequency, drawn rare first).

    Args:
        frequency_masks: dict "r"/"c"/"f" -> (K,) bool masks of the LVIS frequencies.
    """
    num_classes = logits.shape[1] - 1
    with torch.no_grad():
        is_bg = gt_classes == num_classes
        fg_rows, bg_rows = torch.nonzero(~is_bg).flatten(), torch.nonzero(is_bg).flatten()
        weights = torch.empty_like(logits)
        fg_weights = (logits[fg_rows].sigmoid() >= score_thresh).float()
        weights[fg_rows] = fg_weights.scatter_(1, gt_classes[fg_rows][:, None], 1.0)
        picked = logits.new_zeros(len(bg_rows), 3)  # which background rows each frequency gets
        for f, frequency in enumerate(LVIS_FREQUENCIES):
            count = int(len(bg_rows) * BACKGROUND_ROW_SHARE[frequency])
            picked[torch.randperm(len(bg_rows), device=logits.device)[:count], f] = 1
        masks = torch.stack([frequency_masks[f] for f in LVIS_FREQUENCIES]).float()
        weights[bg_rows, :num_classes] = picked @ masks
        weights[bg_rows, num_classes] = 1
    return weights


@CLS_LOSS_REGISTRY.register()
class ACSLLoss(LTClassificationLoss):
    """ACSL over K+1 independent sigmoids (the background column included).

    Args:
        num_classes (int): K.
        frequency (sequence of "r"/"c"/"f" or None): the LVIS frequency of each class.
        score_thresh (float): xi, 0.7.

    ``forward(logits (R, K+1), gt_classes (R,)) -> scalar`` = sum w BCE / R. Scores: plain
    sigmoid per column (no objectness rescaling).
    """

    prior_prob = 0.01
    scores_have_background = True  # the background column is a trained sigmoid

    @configurable
    def __init__(self, *, num_classes, frequency=None, score_thresh=0.7):
        super().__init__(num_classes)
        self.score_thresh = score_thresh
        masks = None
        if frequency is not None:
            frequency = list(frequency)
            masks = torch.tensor([[f == name for f in frequency] for name in LVIS_FREQUENCIES])
        self.register_buffer("frequency_masks", masks, persistent=False)

    @classmethod
    def from_config(cls, cfg, num_classes, class_stats=None):
        return {
            "num_classes": num_classes,
            **train_stat_args(cfg, class_stats, frequency="frequency"),
            "score_thresh": cfg.MODEL.LT.ACSL.SCORE_THRESH,
        }

    def forward(self, logits, gt_classes):
        masks = require(self.frequency_masks, "LVIS frequencies (r/c/f) of the classes")
        return acsl_loss(logits, gt_classes, dict(zip(LVIS_FREQUENCIES, masks)), self.score_thresh)

    def probs(self, logits):
        return logits.sigmoid()

    def extra_repr(self):
        return f"num_classes={self.num_classes}, score_thresh={self.score_thresh}"
