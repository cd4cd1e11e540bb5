# Copyright (c) lt_d2 contributors.
"""Distribution-balanced loss (Wu et al., ECCV 2020), as in the official code.

The math is written for multi-label targets (N, C); the detection loss below applies it to
per-RoI one-hot targets over the K classes (background RoIs have an all-zero row).
"""
import torch
from detectron2.config import configurable
from torch.nn import functional as F

from .base import CLS_LOSS_REGISTRY, LTClassificationLoss, require, train_class_stats
from .utils import append_zero_background, one_hot


def rebalance_weights(targets, class_freq, alpha, beta, mu):
    """w_ki = alpha + sigmoid(beta (r_ki - mu)), r_ki = (1/n_i) / sum_j y_kj / n_j (every class,
    positives and negatives alike). Rows without a positive get r = inf, i.e. w = alpha + 1."""
    freq_inv = 1.0 / class_freq
    repeat_rate = (targets * freq_inv[None, :]).sum(dim=1, keepdim=True)
    ratio = freq_inv[None, :] / repeat_rate
    return alpha + torch.sigmoid(beta * (ratio - mu))


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
    class_freq = class_freq.float().clamp(min=1)
    weights = torch.ones_like(logits)
    if rebalance:
        weights = rebalance_weights(targets, class_freq, alpha, beta, mu)
    # negative-tolerant regularisation: a class-specific bias, and negatives scaled by lambda
    bias = -torch.log((num_samples / class_freq - 1).clamp(min=1e-6)) * init_bias
    if not fix_init_bias_bug:
        bias = bias / neg_scale
    shifted = logits + bias[None, :]
    scaled = shifted * neg_scale * (1 - targets) + shifted * targets
    weights = weights / neg_scale * (1 - targets) + weights * targets
    bce = F.binary_cross_entropy_with_logits(scaled, targets, reduction="none")
    if focal:
        pt = torch.exp(-bce)
        return (balance * (1 - pt).pow(gamma) * weights * bce).mean()
    return (weights * bce).mean()


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
        targets = one_hot(gt_classes, self.num_classes + 1)[:, : self.num_classes]
        return distribution_balanced_loss(logits, targets, class_freq, self.num_samples,
                                          **self.hparams)

    def probs(self, logits):
        return append_zero_background(logits.sigmoid())

    def extra_repr(self):
        return f"num_classes={self.num_classes}, " + ", ".join(f"{k}={v}" for k, v in self.hparams.items())
