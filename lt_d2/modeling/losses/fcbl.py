# Copyright (c) lt_d2 contributors.
"""Foreground classification balance loss (BACL, Qi et al., IEEE TMM 2023)."""
import torch
from detectron2.config import configurable

from .base import CLS_LOSS_REGISTRY, LTClassificationLoss
from .utils import (
    all_reduce_sum_,
    is_distributed,
    one_hot,
    sigmoid_with_objectness,
    weighted_bce_mean,
)


def confusion_margins(cm_numerator, num_gt, labels, alpha):
    """(F, K) margins m_j = alpha log(max(cm[y,j], 1e-3) / max(cm[j,y], 1e-3)) of foreground
    RoIs with labels y, where cm = cm_numerator / max(num_gt, 1) row-wise; only the rows and
    columns the batch needs are read."""
    counts = num_gt.clamp(min=1)
    rows = (cm_numerator.index_select(0, labels) / counts[labels][:, None]).clamp_(min=1e-3).log_()
    cols = (cm_numerator.index_select(1, labels).t() / counts[None, :]).clamp_(min=1e-3).log_()
    return rows.sub_(cols).mul_(alpha)


def fcbl_weights(fg_logits, fg_labels, prob_thresh):
    """FCBL's re-weighting of foreground RoIs (background RoIs weigh 1 everywhere): column j
    counts if its score is at least the label's score or at least ``prob_thresh``, and the
    objectness column always counts (scores: sigmoid(z_j)(1 - sigmoid(z_K)))."""
    with torch.no_grad():
        p = sigmoid_with_objectness(fg_logits)
        label_score = p.gather(1, fg_labels[:, None])
        weights = ((p >= label_score) | (p >= prob_thresh)).float()
        weights[:, -1] = 1
    return weights


def fcbl_loss(logits, gt_classes, cm_numerator, num_gt, alpha=0.85, prob_thresh=0.7,
              reweight=True):
    """sum_ij w_ij BCE(z_ij + m_ij, y_ij) / R' over K+1 sigmoid logits (last = objectness).

    Args:
        logits: (R', K+1); gt_classes: (R',) in [0, K].
        cm_numerator (K, K), num_gt (K,): the running confusion statistics; the confusion
            matrix cm[i, j] = cm_numerator[i, j] / max(num_gt[i], 1) is the average softmax
            probability of class j for samples of class i.
    Margins apply to foreground rows and columns only; so does the re-weighting.
    """
    num_classes = logits.shape[1] - 1
    targets = one_hot(gt_classes, num_classes + 1)
    fg = torch.nonzero(gt_classes < num_classes).flatten()
    weights = None
    if fg.numel():
        labels = gt_classes[fg]
        if reweight:  # scores without the margins
            weights = torch.ones_like(targets)
            weights[fg] = fcbl_weights(logits.detach()[fg], labels, prob_thresh)
        margins = logits.new_zeros(len(fg), num_classes + 1)
        margins[:, :num_classes] = confusion_margins(cm_numerator, num_gt, labels, alpha)
        logits = logits.index_add(0, fg, margins)
    return weighted_bce_mean(logits, targets, weights)


@CLS_LOSS_REGISTRY.register()
class FCBLLoss(LTClassificationLoss):
    """FCBL with pairwise class-aware margins from a running confusion matrix.

    Persistent buffers ``cm_numerator`` (K, K) and ``num_gt`` (K): after each loss, foreground
    rows add onehot(y)^T softmax(z[:, :K]) and their label counts, summed over processes. The
    confusion matrix is cm_numerator / max(num_gt, 1).

    Args:
        num_classes (int): K. alpha (0.85): margin scale. prob_thresh (0.7): re-weighting
        threshold. reweight (bool): apply the re-weighting (BACL stage two: on).

    ``forward(logits (R, K+1), gt_classes (R,)) -> scalar``. Scores: sigmoid(z_c)(1 - sigmoid(z_K)).
    """

    scores_have_background = True  # (TEST.LT.CALIBRATION applies)

    prior_prob = 0.001
    reports_per_class_accuracy = True

    @configurable
    def __init__(self, *, num_classes, alpha=0.85, prob_thresh=0.7, reweight=True):
        super().__init__(num_classes)
        self.alpha, self.prob_thresh, self.reweight = alpha, prob_thresh, reweight
        self.register_buffer("cm_numerator", torch.zeros(num_classes, num_classes))
        self.register_buffer("num_gt", torch.zeros(num_classes))

    @classmethod
    def from_config(cls, cfg, num_classes, class_stats=None):
        c = cfg.MODEL.LT.FCBL
        return {"num_classes": num_classes, "alpha": c.ALPHA, "prob_thresh": c.PROB_THRESH,
                "reweight": c.REWEIGHT}

    @property
    def confusion(self):
        return self.cm_numerator / self.num_gt.clamp(min=1)[:, None]

    def per_class_accuracy(self):
        """(K,) the confusion matrix's diagonal, without forming the (K, K) matrix."""
        return self.cm_numerator.diagonal() / self.num_gt.clamp(min=1)

    def forward(self, logits, gt_classes):
        loss = fcbl_loss(logits, gt_classes, self.cm_numerator, self.num_gt, self.alpha,
                         self.prob_thresh, self.reweight)
        if self.training:
            self._update(logits, gt_classes)
        return loss

    @torch.no_grad()
    def _update(self, logits, gt_classes):
        fg = gt_classes < self.num_classes
        labels = gt_classes[fg]
        probs = logits.detach()[fg, : self.num_classes].softmax(dim=1)
        counts = torch.bincount(labels, minlength=self.num_classes).float()
        # onehot(y)^T probs, as a row scatter instead of a (K, R) x (R, K) product
        if is_distributed():
            numerator = torch.zeros_like(self.cm_numerator).index_add_(0, labels, probs)
            all_reduce_sum_(numerator, counts)
            self.cm_numerator += numerator
        else:  # no (K, K) temporary on a single process
            self.cm_numerator.index_add_(0, labels, probs)
        self.num_gt += counts

    def probs(self, logits):
        return sigmoid_with_objectness(logits)

    def extra_repr(self):
        return f"num_classes={self.num_classes}, alpha={self.alpha}, " \
               f"prob_thresh={self.prob_thresh}, reweight={self.reweight}"
