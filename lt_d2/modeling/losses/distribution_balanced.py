# Copyright (c) lt_d2 contributors.
"""Distribution-balanced loss (Wu et al., ECCV 2020), as in the official code.

The math is written for multi-label targets (N, C); the detection loss below applies it to
per-RoI one-hot targets over the K classes (background RoIs have an all-zero row).
"""
import torch
from detectron2.config import configurable

from .base import CLS_LOSS_REGISTRY, LTClassificationLoss, require, train_class_stats
from .utils import append_zero_background, bce_with_logits, one_hot_foreground


def rebalance_weights(targets, class_freq, alpha, beta, mu):
    """w_ki = alpha + sigmoid(beta (r_ki - mu)), r_ki = (1/n_i) / sum_j y_kj / n_j (every class,
    positives and negatives alike). Rows without a positive get r = inf, i.e. w = alpha + 1."""
    freq_inv = 1.0 / class_freq
    repeat_rate = (targets @ freq_inv)[:, None]
    return (freq_inv[None, :] / repeat_rate).sub_(mu).mul_(beta).sigmoid_().add_(alpha)


def distribution_balanced_loss(logits, targets, class_freq, num_samples, *, alpha=0.1, beta=10.0,
                               mu=0.2, neg_scale=2.0, init_bias=0.05, gamma=2.0, balance=2.0,
                               focal=True, rebalance=True, fix_init_bias_bug=False):
    """The DB loss, mean over all N*C elements (as the official training loop reduces it).

    Args:
        logits: (N, C) sigmoid logits; targets: (N, C) 0/1.
        class_freq: (C,) training samples per class n_i (clamped >= 1);
        num_samples: N_train, the number of training samples.
        alpha, beta, mu: the re-balancing map (``map_param`` alpha/beta/gamma of the code).
        neg_scale (lambda), init_bias (kappa): negative-tolerant regularisation.
        gamma, balance: focal exponent and factor b. focal=False gives weighted BCE (mean).
        fix_init_bias_bug: the official code divides kappa's bias by lambda (its authors call it
            a bug; released numbers have it); True leaves the division out.
    """
    if logits.numel() == 0:
        return logits.sum() * 0.0
    class_freq = class_freq.to(logits.dtype).clamp(min=1)
    weights = None
    if rebalance:
        weights = rebalance_weights(targets, class_freq, alpha, beta, mu)
    # negative-tolerant regularisation: a class-specific bias, and negatives scaled by lambda
    bias = -torch.log((num_samples / class_freq - 1).clamp(min=1e-6)) * init_bias
    if not fix_init_bias_bug:
        bias = bias / neg_scale
    return _DBLossMean.apply(logits, targets.detach(), bias, weights, neg_scale, gamma, balance,
                             focal)


class _DBLossMean(torch.autograd.Function):
    """Mean over elements of b (1 - p_t)^gamma w' BCE(s, y) (or w' BCE without focal), with
    s = lambda (z + bias) and w' = w / lambda for negatives, s = z + bias and w' = w for
    positives, p_t = exp(-BCE). The gradient (through p_t too, as autograd would) is written
    in closed form: one pass instead of autograd's chain over ~20 element-wise ops."""

    @staticmethod
    def forward(ctx, logits, targets, bias, weights, neg_scale, gamma, balance, focal):
        # chain-rule factor ds/dz: lambda on negatives, 1 on positives (in-place steps: see
        # bce_with_logits)
        slope = (targets * (1 - neg_scale)).add_(neg_scale)
        scaled = (logits + bias[None, :]).mul_(slope)
        w = slope.reciprocal() if weights is None else weights / slope
        bce = bce_with_logits(scaled, targets)
        if focal:
            pt = bce.neg().exp_()
            one_minus_pt = pt.neg().add_(1)
            loss = one_minus_pt.pow(gamma).mul_(w).mul_(bce).mul_(balance)
            # d/d(bce) of b (1 - pt)^gamma bce = b (1 - pt)^(gamma-1) [(1 - pt) + gamma pt bce]
            dbce = pt.mul_(bce).mul_(gamma).add_(one_minus_pt)
            dbce.mul_(one_minus_pt.clamp_(min=1e-12).pow_(gamma - 1)).mul_(balance)
        else:
            loss = bce.mul_(w)
            dbce = None
        ctx.save_for_backward(scaled, targets, slope, w, dbce)
        return loss.mean()

    @staticmethod
    def backward(ctx, grad):
        scaled, targets, slope, w, dbce = ctx.saved_tensors
        g = torch.sigmoid(scaled).sub_(targets).mul_(w).mul_(slope)
        if dbce is not None:
            g.mul_(dbce)
        return g.mul_(grad / scaled.numel()), None, None, None, None, None, None, None


@CLS_LOSS_REGISTRY.register()
class DistributionBalancedLoss(LTClassificationLoss):
    """DB loss over K sigmoid logits (no background column) with per-RoI one-hot targets.

    Args:
        num_classes (int): K.
        class_freq (Tensor or None): (K,) training images per class; num_samples (int): training
            images with annotations.
        The remaining keyword arguments are those of :func:`distribution_balanced_loss`
        (defaults: the COCO-MLT configuration).

    ``forward(logits (R, K), gt_classes (R,)) -> scalar``. Scores: sigmoid, background 0.
    """

    @configurable
    def __init__(self, *, num_classes, class_freq=None, num_samples=None, **hparams):
        super().__init__(num_classes)
        self.hparams = hparams
        self.num_samples = num_samples
        freq = None if class_freq is None else torch.as_tensor(class_freq).float()
        self.register_buffer("class_freq", freq, persistent=False)

    @classmethod
    def from_config(cls, cfg, num_classes):
        stats = train_class_stats(cfg)
        c = cfg.MODEL.LT.DB
        return {
            "num_classes": num_classes,
            "class_freq": None if stats is None else stats.image_count,
            "num_samples": None if stats is None else stats.num_images,
            "alpha": c.ALPHA, "beta": c.BETA, "mu": c.MU, "neg_scale": c.NEG_SCALE,
            "init_bias": c.INIT_BIAS, "gamma": c.FOCAL_GAMMA, "balance": c.BALANCE,
            "focal": c.FOCAL, "rebalance": c.REBALANCE, "fix_init_bias_bug": c.FIX_INIT_BIAS_BUG,
        }

    @property
    def num_logits(self):
        return self.num_classes

    def forward(self, logits, gt_classes):
        class_freq = require(self.class_freq, "per-class image counts")
        targets = one_hot_foreground(gt_classes, self.num_classes)
        return distribution_balanced_loss(logits, targets, class_freq, self.num_samples,
                                          **self.hparams)

    def probs(self, logits):
        return append_zero_background(logits.sigmoid())

    def extra_repr(self):
        return f"num_classes={self.num_classes}, " + ", ".join(f"{k}={v}" for k, v in self.hparams.items())
