# Copyright (c) lt_d2 contributors.
"""Distribution-balanced loss (Wu et al., ECCV 2020) and the variants of its official code
(BCE, focal, inverse-frequency and class-balanced weights), for multi-label targets (N, C).

Detection applies it to per-RoI one-hot targets over the K classes (background: all-zero rows).
"""
import torch
from detectron2.config import configurable

from .base import CLS_LOSS_REGISTRY, LTClassificationLoss, require, train_stat_args
from .utils import append_zero_background, bce_logit_grad, bce_with_logits, one_hot_foreground

REWEIGHTS = ("rebalance", "inv", "sqrt_inv", "CB", "none")
CB_MODES = ("by_class", "average_n", "average_w", "min_n")
WEIGHT_NORMS = ("none", "by_instance", "by_batch")


def check_options(reweight, cb_mode, weight_norm, cb_beta):
    """Raise ValueError for an option outside its valid values (named by its config key)."""
    for key, value, valid in (("REWEIGHT", reweight, REWEIGHTS), ("CB_MODE", cb_mode, CB_MODES),
                              ("WEIGHT_NORM", weight_norm, WEIGHT_NORMS)):
        if value not in valid:
            raise ValueError(f"MODEL.LT.DB.{key} (argument {key.lower()}) is {value!r}; valid "
                             f"values: {', '.join(map(repr, valid))}.")
    if reweight == "CB" and not 0 <= cb_beta < 1:
        raise ValueError(f"MODEL.LT.DB.CB_BETA (argument cb_beta) is {cb_beta!r}; valid values: "
                         "0 <= beta < 1.")


def rebalance_weights(targets, image_count, alpha, beta, mu):
    """w_ki = alpha + sigmoid(beta (r_ki - mu)), r_ki = (1/n_i) / sum_j y_kj / n_j (every class,
    positives and negatives alike). Rows without a positive get r = inf, i.e. w = alpha + 1."""
    freq_inv = 1.0 / image_count
    repeat_rate = (targets @ freq_inv)[:, None]
    return (freq_inv[None, :] / repeat_rate).sub_(mu).mul_(beta).sigmoid_().add_(alpha)


def class_balanced_weights(targets, image_count, beta, mode):
    """(1 - beta) / (1 - beta^n): per class (C,) for "by_class", else one weight per sample (N, 1)
    from its positive labels' counts (mean count, mean weight, or smallest count).

    A sample without positives is taken as one of a class with unbounded count (the background),
    weight 1 - beta: the official code gives that for "min_n" and 0/0 for the averages.
    """
    def weight_of_count(n):
        return (1 - beta) / (1 - torch.pow(beta, n))

    if mode == "by_class":
        return weight_of_count(image_count)
    num_pos = targets.sum(1, keepdim=True)
    has_pos = num_pos > 0
    if mode == "average_w":
        mean_w = (targets @ weight_of_count(image_count))[:, None] / num_pos.clamp(min=1)
        return torch.where(has_pos, mean_w, torch.full_like(mean_w, 1 - beta))
    if mode == "average_n":
        count = (targets @ image_count)[:, None] / num_pos.clamp(min=1)
        count = torch.where(has_pos, count, torch.full_like(count, float("inf")))
    else:  # min_n; inf for negatives keeps them out of the min (and empty rows at inf)
        count = torch.where(targets > 0, image_count, torch.full_like(targets, float("inf")))
        count = count.amin(1, keepdim=True)
    return weight_of_count(count)


def distribution_balanced_loss(logits, targets, image_count, num_images, *, alpha=0.1, beta=10.0,
                               mu=0.2, neg_scale=2.0, init_bias=0.05, gamma=2.0, balance=2.0,
                               focal=True, reweight="rebalance", cb_beta=0.9, cb_mode="average_w",
                               weight_norm="none", fix_init_bias_bug=False):
    """The DB loss or a variant, mean over all N*C elements (as the official training loop does).

    Args:
        logits: (N, C) sigmoid logits; targets: (N, C) 0/1 (float or bool).
        image_count: (C,) training images (samples) with label i, n_i (clamped >= 1): the
            official ``class_freq``;
        num_images: N_train, the number of training images (samples) with annotations.
        reweight: weight w: "rebalance" (the map alpha, beta, mu: the code's ``map_param``
            alpha/beta/gamma), "inv" (N_train / n_i), "sqrt_inv" (its root), "CB"
            (:func:`class_balanced_weights` with cb_beta, cb_mode) or "none" (w = 1).
        weight_norm: "by_instance" divides w by its max over classes (so a (C,) weight by its
            max, an (N, 1) one by itself), "by_batch" by its overall max, "none" leaves it.
        neg_scale (lambda), init_bias (kappa): negative-tolerant regularisation, applied after the
            reweighting; lambda = 1 and kappa = 0 turn it off.
        gamma, balance: focal exponent and factor b. focal=False gives weighted BCE (mean); with
            reweight "none", lambda 1 and kappa 0 that is plain BCE.
        fix_init_bias_bug: the official code divides kappa's bias by lambda (its authors call it
            a bug; released numbers have it); True leaves the division out.
    """
    check_options(reweight, cb_mode, weight_norm, cb_beta)
    if logits.numel() == 0:
        return logits.sum() * 0.0
    targets = targets.detach().to(logits.dtype)
    image_count = image_count.to(logits).clamp(min=1)
    weights = None
    if reweight == "rebalance":
        weights = rebalance_weights(targets, image_count, alpha, beta, mu)
    elif reweight in ("inv", "sqrt_inv"):
        weights = num_images / image_count
        weights = weights.sqrt() if reweight == "sqrt_inv" else weights
    elif reweight == "CB":
        weights = class_balanced_weights(targets, image_count, cb_beta, cb_mode)
    if weights is not None and weight_norm != "none":
        weights = weights / (weights.amax(-1, keepdim=True) if weight_norm == "by_instance"
                             else weights.max())
    # negative-tolerant regularisation: a class-specific bias, and negatives scaled by lambda
    bias = -torch.log((num_images / image_count - 1).clamp(min=1e-6)) * init_bias
    if not fix_init_bias_bug:
        bias = bias / neg_scale
    return _DBLossMean.apply(logits, targets, bias, weights, neg_scale, gamma, balance, focal)


class _DBLossMean(torch.autograd.Function):
    """Mean over elements of b (1 - p_t)^gamma w' BCE(s, y) (or w' BCE without focal), with
    s = lambda (z + bias) and w' = w / lambda for negatives, s = z + bias and w' = w for
    positives, p_t = exp(-BCE). w is None (1) or broadcasts to (N, C): (C,), (N, 1) or (N, C).

    The gradient (through p_t too, as autograd would) is written in closed form: one pass
    instead of autograd's chain over ~20 element-wise ops. ds/dz = lambda cancels the 1/lambda
    of w', so dL/dz = w (sigmoid(s) - y) [focal factor]: backward needs no lambda."""

    @staticmethod
    def forward(ctx, logits, targets, bias, weights, neg_scale, gamma, balance, focal):
        # ds/dz: lambda on negatives, 1 on positives (in-place steps: see bce_with_logits)
        slope = (targets * (1 - neg_scale)).add_(neg_scale)
        scaled = (logits + bias[None, :]).mul_(slope)
        loss_weight = slope.reciprocal_() if weights is None else weights / slope
        bce = bce_with_logits(scaled, targets)
        if focal:
            pt = bce.neg().exp_()
            one_minus_pt = pt.neg().add_(1)
            loss = one_minus_pt.pow(gamma).mul_(loss_weight).mul_(bce).mul_(balance)
            # d/d(bce) of b (1 - pt)^gamma bce = b (1 - pt)^(gamma-1) [(1 - pt) + gamma pt bce]
            grad_scale = pt.mul_(bce).mul_(gamma).add_(one_minus_pt)
            grad_scale.mul_(one_minus_pt.clamp_(min=1e-12).pow_(gamma - 1)).mul_(balance)
            if weights is not None:
                grad_scale.mul_(weights)
        else:
            loss = bce.mul_(loss_weight)
            grad_scale = weights
        ctx.save_for_backward(scaled, targets, grad_scale)
        return loss.mean()

    @staticmethod
    def backward(ctx, grad):
        scaled, targets, grad_scale = ctx.saved_tensors
        g = bce_logit_grad(scaled, targets, grad_scale)
        return g.mul_(grad / scaled.numel()), None, None, None, None, None, None, None


@CLS_LOSS_REGISTRY.register()
class DistributionBalancedLoss(LTClassificationLoss):
    """DB loss (or one of its variants) over K sigmoid logits, no background column.

    Args:
        num_classes (int): K.
        image_count (Tensor or None): (K,) training images per class; num_images (int): training
            images with annotations.
        The remaining keyword arguments are those of :func:`distribution_balanced_loss`
        (defaults: the COCO-MLT configuration).

    ``forward(logits (R, K), gt) -> scalar`` with gt either (R,) labels in [0, K] (detection,
    K = background) or (R, K) multi-hot targets. Scores: sigmoid, background 0.
    """

    multi_label = True
    scores_have_background = False  # K sigmoids, a background score of 0 appended

    @configurable
    def __init__(self, *, num_classes, image_count=None, num_images=None, **hparams):
        super().__init__(num_classes)
        # a dry run on an empty batch: bad option values (and unknown keywords) fail when the
        # model is built, not at its first training step
        empty = torch.zeros(0, num_classes)
        distribution_balanced_loss(empty, empty, torch.ones(num_classes), 2, **hparams)
        self.hparams = hparams
        self.num_images = num_images
        counts = None if image_count is None else torch.as_tensor(image_count).float()
        self.register_buffer("image_count", counts, persistent=False)

    @classmethod
    def from_config(cls, cfg, num_classes, class_stats=None):
        c = cfg.MODEL.LT.DB
        return {
            "num_classes": num_classes,
            **train_stat_args(cfg, class_stats, image_count="image_count", num_images="num_images"),
            "alpha": c.ALPHA, "beta": c.BETA, "mu": c.MU, "neg_scale": c.NEG_SCALE,
            "init_bias": c.INIT_BIAS, "gamma": c.FOCAL_GAMMA, "balance": c.BALANCE,
            "focal": c.FOCAL, "reweight": c.REWEIGHT, "cb_beta": c.CB_BETA, "cb_mode": c.CB_MODE,
            "weight_norm": c.WEIGHT_NORM, "fix_init_bias_bug": c.FIX_INIT_BIAS_BUG,
        }

    @property
    def num_logits(self):
        return self.num_classes

    def forward(self, logits, gt):
        image_count = require(self.image_count, "per-class image counts")
        if gt.dim() == 2:
            if gt.shape != logits.shape:
                raise ValueError(f"Multi-hot targets of shape {tuple(gt.shape)} for logits of "
                                 f"shape {tuple(logits.shape)}; they must match.")
            targets = gt
        else:
            targets = one_hot_foreground(gt, self.num_classes)
        return distribution_balanced_loss(logits, targets, image_count, self.num_images,
                                          **self.hparams)

    def probs(self, logits):
        return append_zero_background(logits.sigmoid())

    def extra_repr(self):
        hparams = ", ".join(f"{k}={v}" for k, v in self.hparams.items())
        return f"num_classes={self.num_classes}, {hparams}"
