# Copyright (c) lt_d2 contributors.
"""Seesaw loss (Wang et al., CVPR 2021), as in mmdetection, with synchronised counts."""
import torch
from detectron2.config import configurable
from detectron2.layers import cross_entropy
from torch.nn import functional as F

from .base import CLS_LOSS_REGISTRY, LTClassificationLoss
from .utils import all_reduce_sum_


def seesaw_factors(logits, labels, cum_samples, p, q, eps):
    """(R, K) factors S_ij = M_ij C_ij for foreground RoIs with labels i.

    Mitigation M_ij = (N_j / N_i)^p where N_j < N_i (N = cumulative samples, clamped >= 1);
    compensation C_ij = (s_j / s_i)^q where s_j > s_i (s = softmax of the detached logits,
    s_i clamped >= eps).
    """
    factors = logits.new_ones(logits.shape)
    if p > 0:
        counts = cum_samples.clamp(min=1).float()
        ratio = counts[None, :] / counts[:, None]
        factors = factors * torch.where(ratio < 1, ratio.pow(p), torch.ones_like(ratio))[labels]
    if q > 0:
        scores = F.softmax(logits.detach(), dim=1)
        self_scores = scores.gather(1, labels[:, None]).clamp(min=eps)
        ratio = scores / self_scores
        factors = factors * torch.where(ratio > 1, ratio.pow(q), torch.ones_like(ratio))
    return factors


def seesaw_loss(logits, gt_classes, cum_samples, p=0.8, q=2.0, eps=1e-2):
    """Seesaw classification + objectness losses, each summed and divided by R (all RoIs).

    Args:
        logits: (R, K+2): K class logits, then objectness logits (object, background).
        gt_classes: (R,) in [0, K]; cum_samples: (K+1,) samples seen per label so far.
    Returns:
        dict with "loss_cls" (seesaw CE over foreground RoIs) and "loss_cls_objectness".
    """
    num_classes = logits.shape[1] - 2
    num_rois = max(logits.shape[0], 1)
    cls_logits, obj_logits = logits[:, :num_classes], logits[:, num_classes:]
    fg = gt_classes < num_classes
    fg_logits, fg_labels = cls_logits[fg], gt_classes[fg]
    if fg_labels.numel():
        factors = seesaw_factors(fg_logits, fg_labels, cum_samples[:num_classes], p, q, eps)
        targets = F.one_hot(fg_labels, num_classes)
        adjusted = fg_logits + factors.log() * (1 - targets)
        loss_cls = F.cross_entropy(adjusted, fg_labels, reduction="sum") / num_rois
    else:
        loss_cls = cls_logits.sum() * 0.0
    obj_labels = (gt_classes == num_classes).long()
    loss_obj = cross_entropy(obj_logits, obj_labels, reduction="sum") / num_rois
    return {"loss_cls": loss_cls, "loss_cls_objectness": loss_obj}


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

    @configurable
    def __init__(self, *, num_classes, p=0.8, q=2.0, eps=1e-2):
        super().__init__(num_classes)
        self.p, self.q, self.eps = p, q, eps
        self.register_buffer("cum_samples", torch.zeros(num_classes + 1))

    @classmethod
    def from_config(cls, cfg, num_classes):
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
        return seesaw_loss(logits, gt_classes, self.cum_samples, self.p, self.q, self.eps)

    def probs(self, logits):
        cls_scores = logits[:, :-2].softmax(dim=1)
        obj_scores = logits[:, -2:].softmax(dim=1)
        return torch.cat([cls_scores * obj_scores[:, :1], obj_scores[:, 1:]], dim=1)

    def extra_repr(self):
        return f"num_classes={self.num_classes}, p={self.p}, q={self.q}, eps={self.eps}"
