# Copyright (c) lt_d2 contributors.
"""BACL's feature hallucination module (FHM; Qi et al., IEEE TMM 2023), as in the official code.

Per training iteration: ground-truth boxes are jittered (``JITTER_COPIES`` = 16 boxes per box),
their box-head features update per-class running mean / variance, classes are drawn with
probability proportional to 1 - their accuracy, and features are sampled from the drawn classes'
Gaussians to give the classifier extra samples of poorly classified classes.

This file holds the module and its math; the ROI heads decide where its features come from.
"""
import torch
from detectron2.config import configurable
from detectron2.utils.registry import Registry
from torch import nn

from .losses.utils import all_reduce_sum_, float32_math, upcast

HALLUCINATOR_REGISTRY = Registry("LT_HALLUCINATOR")
HALLUCINATOR_REGISTRY.__doc__ = """Feature hallucination modules owned by lt_d2's ROI heads."""

# Jittered copies of each ground-truth box: one per sign pattern of its 4 coordinates.
JITTER_COPIES = 2 ** 4


def _jitter_signs():
    """(JITTER_COPIES, 4) signs: copy m moves x1, y1, x2, y2 by the bits of m (the official
    patterns [-1 x8, +1 x8], [-1 x4, +1 x4] x2, [-1, -1, +1, +1] x4, [-1, +1] x8)."""
    m = torch.arange(JITTER_COPIES)
    bits = torch.stack([(m >> 3) & 1, (m >> 2) & 1, (m >> 1) & 1, m & 1], dim=1)
    return bits.float() * 2 - 1


def jitter_boxes(boxes, image_size, generator=None):
    """``JITTER_COPIES`` jittered copies of each (x1, y1, x2, y2) box, clipped to the image.

    Coordinate k of copy m moves by s_km * U(0, 1) * (box width or height) / 6.

    Args:
        boxes: (M, 4); image_size: (height, width).
    Returns:
        (M * JITTER_COPIES, 4): the copies of box 0, then of box 1, ...
    """
    signs = _jitter_signs().to(boxes.device)
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # w, h, w, h
    noise = torch.rand(len(boxes), JITTER_COPIES, 4, generator=generator).to(boxes.device)
    jittered = boxes[:, None, :] + signs[None] * noise * wh[:, None, :] / 6
    height, width = image_size
    jittered[..., 0::2] = jittered[..., 0::2].clamp(0, width)
    jittered[..., 1::2] = jittered[..., 1::2].clamp(0, height)
    return jittered.reshape(-1, 4)


@HALLUCINATOR_REGISTRY.register()
class FeatureHallucinator(nn.Module):
    """Per-class Gaussian statistics of box features and sampling from them.

    Persistent buffers: ``feature_mean``, ``feature_var`` (K, D) and ``feature_used`` (K,).

    Args:
        num_classes (int): K. feature_dim (int): D.
        momentum (float): EMA weight of the new batch (the official decay ratio 0.1).
        num_sampled_classes (int): classes drawn per iteration (8).
        num_per_class (int): features sampled per drawn class (12 in BACL's configs).
        sync_stats (bool): compute batch statistics over all processes so that every rank holds
            the same state (the official code keeps per-rank statistics: False).
    """

    @configurable
    def __init__(self, *, num_classes, feature_dim, momentum=0.1, num_sampled_classes=8,
                 num_per_class=12, sync_stats=True):
        super().__init__()
        self.num_classes, self.feature_dim = num_classes, feature_dim
        self.momentum, self.sync_stats = momentum, sync_stats
        self.num_sampled_classes, self.num_per_class = num_sampled_classes, num_per_class
        self.register_buffer("feature_mean", torch.zeros(num_classes, feature_dim))
        self.register_buffer("feature_var", torch.zeros(num_classes, feature_dim))
        self.register_buffer("feature_used", torch.zeros(num_classes))

    @classmethod
    def from_config(cls, cfg, num_classes, feature_dim):
        c = cfg.MODEL.LT.HALLUCINATION
        return {"num_classes": num_classes, "feature_dim": feature_dim, "momentum": c.MOMENTUM,
                "num_sampled_classes": c.NUM_CLASSES, "num_per_class": c.NUM_PER_CLASS,
                "sync_stats": c.SYNC_STATS}

    @torch.no_grad()
    def update(self, features, labels):
        """Fold a batch of (N, D) features with (N,) labels in [0, K) into the statistics.

        Per class in the batch: mean and variance (unbiased when it has > 1 sample, else 0);
        a class seen for the first time takes them as they are, later ones move by
        ``momentum`` towards them. Features of any dtype (float16 / bfloat16 under autocast)
        are folded in float32, the dtype of the statistics.
        """
        with float32_math(features):
            self._update(upcast(features), labels)

    def _update(self, features, labels):
        k = self.num_classes
        counts = torch.bincount(labels, minlength=k).to(features.dtype)
        sums = features.new_zeros(k, self.feature_dim).index_add_(0, labels, features)
        squares = features.new_zeros(k, self.feature_dim).index_add_(0, labels, features * features)
        if self.sync_stats:
            all_reduce_sum_(counts, sums, squares)
        seen = counts > 0
        n = counts[:, None].clamp(min=1)
        mean = sums / n
        var = ((squares - n * mean * mean) / (n - 1).clamp(min=1)).clamp(min=0)
        var[counts <= 1] = 0
        first = seen & (self.feature_used == 0)
        later = seen & (self.feature_used > 0)
        self.feature_mean[first] = mean[first]
        self.feature_var[first] = var[first]
        m = self.momentum
        self.feature_mean[later] = m * mean[later] + (1 - m) * self.feature_mean[later]
        self.feature_var[later] = m * var[later] + (1 - m) * self.feature_var[later]
        self.feature_used[seen] = 1

    def sample_classes(self, accuracy, generator=None):
        """``num_sampled_classes`` classes drawn with replacement, P(c) proportional to
        1 - accuracy[c]; uniform if every class is perfectly classified."""
        weights = (1 - accuracy).clamp(min=0)
        if weights.sum() <= 0:
            weights = torch.ones_like(weights)
        return torch.multinomial(weights, self.num_sampled_classes, replacement=True,
                                 generator=generator)

    def hallucinate(self, classes, generator=None):
        """Features mean_c + std_c * eps (eps ~ N(0, I)), ``num_per_class`` per drawn class;
        classes without statistics yet are skipped. Returns ((F, D) features, (F,) labels)."""
        classes = classes[self.feature_used[classes] > 0]
        labels = classes.repeat_interleave(self.num_per_class)
        eps = torch.randn(len(labels), self.feature_dim, generator=generator).to(self.feature_mean)
        features = self.feature_mean[labels] + self.feature_var[labels].sqrt() * eps
        return features, labels

    def extra_repr(self):
        return (f"num_classes={self.num_classes}, feature_dim={self.feature_dim}, "
                f"momentum={self.momentum}, num_sampled_classes={self.num_sampled_classes}, "
                f"num_per_class={self.num_per_class}, sync_stats={self.sync_stats}")
