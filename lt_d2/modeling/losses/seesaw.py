# Copyright (c) lt_d2 contributors.
"""Seesaw loss (Wang et al., CVPR 2021), as in mmdetection, with synchronised counts."""
import math

import torch
from detectron2.config import configurable
from detectron2.layers import cross_entropy
from torch.nn import functional as F

from .base import CLS_LOSS_REGISTRY, LTClassificationLoss
from .utils import all_reduce_sum_


def seesaw_log_factors(logits, labels, cum_samples, p, q, eps):
    """(R, K) log S_ij = log M_ij + log C_ij for foreground RoIs with labels i.

    Mitigation M_ij = (N_j / N_i)^p where N_j < N_i (N = cumulative samples, clamped >= 1);
    compensation C_ij = (s_j / s_i)^q where s_j > s_i (s = softmax of the detached logits,
    s_i clamped >= eps). Computed as p min(log N_j - log N_i, 0) + q max(log s_j - log s_i, 0),
    which needs no (K, K) matrix and no power.
    """
    log_factors = logits.new_zeros(logits.shape)
    if p > 0:
        log_counts = cum_samples.clamp(min=1).float().log()
        log_factors += p * (log_counts[None, :] - log_counts[labels][:, None]).clamp(max=0)
    if q > 0:
        log_scores = F.log_softmax(logits.detach(), dim=1)
        self_log = log_scores.gather(1, labels[:, None]).clamp(min=math.log(eps))
        log_factors += q * (log_scores - self_log).clamp(min=0)
    return log_factors


def seesaw_loss(logits, gt_classes, cum_samples, p=0.8, q=2.0, eps=1e-2):
    """The seesaw classification loss: CE of the foreground RoIs over the K class logits, each
    other class's logit shifted by log S_ij, summed and divided by R (all RoIs).

    Args:
        logits: (R, K+2): K class logits, then objectness logits (object, background; their
            loss is :func:`seesaw_objectness_loss`).
        gt_classes: (R,) in [0, K]; cum_samples: (K+1,) samples seen per label so far.
    """
    num_classes = logits.shape[1] - 2
    num_rois = max(logits.shape[0], 1)
    cls_logits = logits[:, :num_classes]
    fg = gt_classes < num_classes
    fg_logits, fg_labels = cls_logits[fg], gt_classes[fg]
    if not fg_labels.numel():
        return cls_logits.sum() * 0.0
    log_factors = seesaw_log_factors(fg_logits, fg_labels, cum_samples[:num_classes], p, q, eps)
    adjusted = fg_logits + log_factors.scatter_(1, fg_labels[:, None], 0.0)  # not on the label
    return F.cross_entropy(adjusted, fg_labels, reduction="sum") / num_rois


def seesaw_objectness_loss(logits, gt_classes):
    """CE of the last 2 logits (object, background) against "is background", summed and
    divided by R (all RoIs)."""
    num_classes = logits.shape[1] - 2
    obj_labels = (gt_classes == num_classes).long()
    loss = cross_entropy(logits[:, num_classes:], obj_labels, reduction="sum")
    return loss / max(logits.shape[0], 1)


@CLS_LOSS_REGISTRY.register()
class SeesawLoss(LTClassificationLoss):
    """Seesaw loss over K class logits plus 2 objectness logits.

    The persistent buffer ``cum_samples`` (K+1) counts the labels seen, summed over processes,
    and is updated with the current batch before the loss (as in mmdetection).

    Args:
        num_classes (int): K. p (0.8), q (2.0), eps (0.01): the paper's hyper-parameters.

    ``forward(logits (R, K+2), gt_classes (R,)) -> {"loss_cls", "loss_cls_objectness"}``.
    Scores: softmax over classes times P(object); background P(background).
    """

    scores_have_background = True  # (TEST.LT.CALIBRATION applies)

    @configurable
    def __init__(self, *, num_classes, p=0.8, q=2.0, eps=1e-2):
        super().__init__(num_classes)
        self.p, self.q, self.eps = p, q, eps
        self.register_buffer("cum_samples", torch.zeros(num_classes + 1))

    @classmethod
    def from_config(cls, cfg, num_classes, class_stats=None):
        c = cfg.MODEL.LT.SEESAW
        return {"num_classes": num_classes, "p": c.P, "q": c.Q, "eps": c.EPS}

    @property
    def num_logits(self):
        return self.num_classes + 2

    def forward(self, logits, gt_classes):
        if self.training:
            with torch.no_grad():
                counts = torch.bincount(gt_classes, minlength=self.num_classes + 1).float()
                all_reduce_sum_(counts)
                self.cum_samples += counts
        return {
            "loss_cls": seesaw_loss(logits, gt_classes, self.cum_samples, self.p, self.q, self.eps),
            "loss_cls_objectness": seesaw_objectness_loss(logits, gt_classes),
        }

    def probs(self, logits):
        cls_scores = logits[:, :-2].softmax(dim=1)
        obj_scores = logits[:, -2:].softmax(dim=1)
        return torch.cat([cls_scores * obj_scores[:, :1], obj_scores[:, 1:]], dim=1)

    def extra_repr(self):
        return f"num_classes={self.num_classes}, p={self.p}, q={self.q}, eps={self.eps}"
