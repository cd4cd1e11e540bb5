# Copyright (c) lt_d2 contributors.
"""Equalization loss v2 (Tan et al., CVPR 2021): gradient-guided re-weighting."""
import torch
from detectron2.config import configurable

from .base import CLS_LOSS_REGISTRY, LTClassificationLoss
from .utils import all_reduce_sum_, one_hot, sigmoid_with_objectness, weighted_bce_mean


def eqlv2_weights(pos_neg, gamma, mu, alpha):
    """Negative and positive weights of the K classes from the accumulated ratio g = pos/neg:
    q_neg = 1 / (1 + exp(-gamma (g - mu))), q_pos = 1 + alpha (1 - q_neg); the objectness
    column gets 1. Returns (pos_w, neg_w), each (K+1,)."""
    q_neg = torch.sigmoid(gamma * (pos_neg - mu))
    q_pos = 1 + alpha * (1 - q_neg)
    one = q_neg.new_ones(1)
    return torch.cat([q_pos, one]), torch.cat([q_neg, one])


def eqlv2_targets_and_weights(logits, gt_classes, pos_neg, gamma, mu, alpha):
    """The one-hot targets y (R, K+1) and the weights w = q_pos y + q_neg (1 - y) of
    :func:`eqlv2_loss`; its module accumulates gradient statistics with both."""
    targets = one_hot(gt_classes, logits.shape[1])
    pos_w, neg_w = eqlv2_weights(pos_neg, gamma, mu, alpha)
    # q_neg everywhere, q_pos at the label: q_pos y + q_neg (1 - y) with one allocation
    weights = neg_w.expand(logits.shape[0], -1).clone()
    weights.scatter_(1, gt_classes[:, None], pos_w[gt_classes][:, None])
    return targets, weights


def eqlv2_loss(logits, gt_classes, pos_neg, gamma=12.0, mu=0.8, alpha=4.0):
    """sum_ij w_ij BCE(z_ij, y_ij) / R with w = q_pos y + q_neg (1 - y) (paper eq. 5-7).

    Args:
        logits: (R, K+1) sigmoid logits, the last one objectness; gt_classes: (R,) in [0, K];
        pos_neg: (K,) accumulated positive/negative gradient ratio of previous iterations.
    """
    targets, weights = eqlv2_targets_and_weights(logits, gt_classes, pos_neg, gamma, mu, alpha)
    return weighted_bce_mean(logits, targets, weights)


@CLS_LOSS_REGISTRY.register()
class EQLv2Loss(LTClassificationLoss):
    """EQLv2 over K+1 sigmoid logits (the last one objectness).

    Persistent buffers ``pos_grad``, ``neg_grad`` (K) and ``pos_neg`` (K, starts at 100 so the
    first weights are all 1) accumulate |dBCE/dz| of positives and negatives over all iterations
    and all processes (summed with all-reduce when there are several). Weights use the state of
    previous iterations; the state is updated in training mode only, and the ratio of a class
    only when it received some gradient.

    Args:
        num_classes (int): K. gamma (12), mu (0.8), alpha (4): the paper's hyper-parameters.

    ``forward(logits (R, K+1), gt_classes (R,)) -> scalar``. Scores: sigmoid(z_c)(1 - sigmoid(z_K)).
    """

    prior_prob = 0.001

    @configurable
    def __init__(self, *, num_classes, gamma=12.0, mu=0.8, alpha=4.0):
        super().__init__(num_classes)
        self.gamma, self.mu, self.alpha = gamma, mu, alpha
        self.register_buffer("pos_grad", torch.zeros(num_classes))
        self.register_buffer("neg_grad", torch.zeros(num_classes))
        self.register_buffer("pos_neg", torch.full((num_classes,), 100.0))

    @classmethod
    def from_config(cls, cfg, num_classes, class_stats=None):
        c = cfg.MODEL.LT.EQLV2
        return {"num_classes": num_classes, "gamma": c.GAMMA, "mu": c.MU, "alpha": c.ALPHA}

    def forward(self, logits, gt_classes):
        targets, weights = eqlv2_targets_and_weights(
            logits, gt_classes, self.pos_neg, self.gamma, self.mu, self.alpha)
        loss = weighted_bce_mean(logits, targets, weights)
        if self.training:
            self._accumulate(logits, gt_classes, targets, weights)
        return loss

    @torch.no_grad()
    def _accumulate(self, logits, gt_classes, targets, weights):
        weighted_grad = logits.detach().sigmoid().sub_(targets).abs_().mul_(weights)
        # targets are one-hot: the positive part of each row sits at its label
        at_label = weighted_grad.gather(1, gt_classes[:, None]).squeeze(1)
        pos = torch.zeros(self.num_classes + 1, device=logits.device).index_add_(
            0, gt_classes, at_label)[:-1]
        neg = weighted_grad[:, :-1].sum(0) - pos
        all_reduce_sum_(pos, neg)
        self.pos_grad += pos
        self.neg_grad += neg
        # the official code recomputes every ratio; a class that got no gradient at all (an
        # empty batch, saturated logits) keeps its ratio, so its initial 100 (weights 1) does
        # not become 0 / 1e-10 = 0 before the class was ever seen
        seen = (pos + neg) > 0
        self.pos_neg.copy_(torch.where(seen, self.pos_grad / (self.neg_grad + 1e-10), self.pos_neg))

    def probs(self, logits):
        return sigmoid_with_objectness(logits)

    def extra_repr(self):
        return (f"num_classes={self.num_classes}, gamma={self.gamma}, mu={self.mu}, "
                f"alpha={self.alpha}")
