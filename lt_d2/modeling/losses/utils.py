# Copyright (c) lt_d2 contributors.
"""Helpers shared by the losses: targets, objectness scores, cross-process sums."""
import torch
import torch.distributed as dist
from torch.nn import functional as F


def one_hot(gt_classes, num_columns):
    """(R, num_columns) float one-hot of ``gt_classes`` (values < num_columns)."""
    return F.one_hot(gt_classes, num_columns).to(torch.float32)


def sigmoid_with_objectness(logits):
    """Scores of K+1 sigmoid outputs whose last one is an objectness/background classifier:
    class c gets sigmoid(z_c) * (1 - sigmoid(z_K)) and the background keeps sigmoid(z_K)."""
    p = logits.sigmoid()
    return torch.cat([p[:, :-1] * (1 - p[:, -1:]), p[:, -1:]], dim=1)


def append_zero_background(probs):
    """(R, K) class scores -> (R, K+1) with a background score of 0 (for K-logit losses)."""
    return torch.cat([probs, probs.new_zeros(probs.shape[0], 1)], dim=1)


def weighted_bce_mean(logits, targets, weights=None):
    """sum_ij w_ij BCE(z_ij, y_ij) / R: the per-RoI normalisation of the official losses."""
    if logits.numel() == 0:
        return logits.sum() * 0.0  # keeps the graph connected for empty batches
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if weights is not None:
        loss = loss * weights
    return loss.sum() / logits.shape[0]


def all_reduce_sum_(*tensors):
    """Sum ``tensors`` in place over all processes; a no-op on a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
