# Copyright (c) lt_d2 contributors.
"""Foreground classification balance loss (BACL, Qi et al., IEEE TMM 2023)."""
import torch
from detectron2.config import configurable

from .base import CLS_LOSS_REGISTRY, LTClassificationLoss
from .utils import all_reduce_sum_, one_hot, sigmoid_with_objectness, weighted_bce_mean


def confusion_margins(confusion, gt_classes, alpha):
    """(R, K+1) margins m_ij = alpha log(max(cm[y,j], 1e-3) / max(cm[j,y], 1e-3)) for
    foreground RoIs i (label y) and foreground columns j; 0 elsewhere."""
    num_classes = confusion.shape[0]
    margins = confusion.new_zeros(len(gt_classes), num_classes + 1)
    fg = torch.nonzero(gt_classes < num_classes).flatten()
    if fg.numel():
        y = gt_classes[fg]
        cm = confusion.clamp(min=1e-3)
        margins[fg, :num_classes] = alpha * (cm[y].log() - cm[:, y].t().log())
    return margins


def fcbl_weights(logits, gt_classes, prob_thresh):
    """FCBL's re-weighting: for a foreground RoI with label y, column j counts if its score is
    at least the label's score or at least ``prob_thresh``, and the objectness column always
    counts (scores: sigmoid(z_j)(1 - sigmoid(z_K))); background RoIs count everywhere."""
    num_classes = logits.shape[1] - 1
    with torch.no_grad():
        p = sigmoid_with_objectness(logits.detach())
        p[:, num_classes] = 0  # compared on class scores only; the column is set to 1 below
        label_score = p.gather(1, gt_classes.clamp(max=num_classes)[:, None])
        weights = ((p >= label_score) | (p >= prob_thresh)).float()
        weights[:, num_classes] = 1
        weights[gt_classes == num_classes] = 1
    return weights


def fcbl_loss(logits, gt_classes, confusion, alpha=0.85, prob_thresh=0.7, reweight=True):
    """sum_ij w_ij BCE(z_ij + m_ij, y_ij) / R' over K+1 sigmoid logits (last = objectness).

    Args:
        logits: (R', K+1); gt_classes: (R',) in [0, K]; confusion: (K, K) running average
            softmax probability of class j for samples of class i.
    """
    targets = one_hot(gt_classes, logits.shape[1])
    margins = confusion_margins(confusion, gt_classes, alpha)
    weights = fcbl_weights(logits, gt_classes, prob_thresh) if reweight else None
    return weighted_bce_mean(logits + margins, targets, weights)


@CLS_LOSS_REGISTRY.register()
class FCBLoss(LTClassificationLoss):
    """FCBL with pairwise class-aware margins from a running confusion matrix.

    Persistent buffers ``cm_numerator`` (K, K) and ``num_gt`` (K): after each loss, foreground
    rows add onehot(y)^T softmax(z[:, :K]) and their label counts, summed over processes. The
    confusion matrix is cm_numerator / max(num_gt, 1).

    Args:
        num_classes (int): K. alpha (0.85): margin scale. prob_thresh (0.7): re-weighting
        threshold. reweight (bool): apply the re-weighting (BACL stage two: on).

    ``forward(logits (R, K+1), gt_classes (R,)) -> scalar``. Scores: sigmoid(z_c)(1 - sigmoid(z_K)).
    """

    prior_prob = 0.001

    @configurable
    def __init__(self, *, num_classes, alpha=0.85, prob_thresh=0.7, reweight=True):
        super().__init__(num_classes)
        self.alpha, self.prob_thresh, self.reweight = alpha, prob_thresh, reweight
        self.register_buffer("cm_numerator", torch.zeros(num_classes, num_classes))
        self.register_buffer("num_gt", torch.zeros(num_classes))

    @classmethod
    def from_config(cls, cfg, num_classes):
        c = cfg.MODEL.LT.FCBL
        return {"num_classes": num_classes, "alpha": c.ALPHA, "prob_thresh": c.PROB_THRESH,
                "reweight": c.REWEIGHT}

    @property
    def confusion(self):
        return self.cm_numerator / self.num_gt.clamp(min=1)[:, None]

    def forward(self, logits, gt_classes):
        loss = fcbl_loss(logits, gt_classes, self.confusion, self.alpha, self.prob_thresh,
                         self.reweight)
        if self.training:
            self._update(logits, gt_classes)
        return loss

    @torch.no_grad()
    def _update(self, logits, gt_classes):
        fg = gt_classes < self.num_classes
        labels = gt_classes[fg]
        probs = logits.detach()[fg, : self.num_classes].softmax(dim=1)
        numerator = one_hot(labels, self.num_classes).t() @ probs
        counts = torch.bincount(labels, minlength=self.num_classes).float()
        all_reduce_sum_(numerator, counts)
        self.cm_numerator += numerator
        self.num_gt += counts

    def probs(self, logits):
        return sigmoid_with_objectness(logits)

    def extra_repr(self):
        return f"num_classes={self.num_classes}, alpha={self.alpha}, " \
               f"prob_thresh={self.prob_thresh}, reweight={self.reweight}"
