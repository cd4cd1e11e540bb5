# Copyright (c) lt_d2 contributors.
"""Helpers shared by the losses: targets, objectness scores, cross-process sums, float32 math."""
import contextlib

import torch
import torch.distributed as dist


def float32_math(tensor):
    """A context in which autocast is off on ``tensor``'s device, so that the loss math (and
    the state updated from it) runs in float32 under mixed precision: autocast would otherwise
    run matrix products of float32 operands in float16 / bfloat16."""
    try:
        return torch.autocast(tensor.device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know: it cannot be on there
        return contextlib.nullcontext()


def upcast(tensor):
    """``tensor`` in float32 if it is a float16 / bfloat16 tensor; as it is otherwise (float64
    stays float64)."""
    return tensor.float() if tensor.is_floating_point() and tensor.element_size() < 4 else tensor


def one_hot(gt_classes, num_columns, dtype=torch.float32):
    """(R, num_columns) float one-hot of ``gt_classes`` (values < num_columns)."""
    out = torch.zeros(len(gt_classes), num_columns, dtype=dtype, device=gt_classes.device)
    return out.scatter_(1, gt_classes[:, None], 1.0)


def one_hot_foreground(gt_classes, num_classes):
    """(R, K) one-hot over the K classes; background rows (label K) are all zero."""
    out = torch.zeros(len(gt_classes), num_classes + 1, device=gt_classes.device)
    return out.scatter_(1, gt_classes[:, None], 1.0)[:, :num_classes].contiguous()


def bce_with_logits(logits, targets):
    """Element-wise BCE(z, y) = max(z, 0) - z y - log(sigmoid(|z|)), without autograd.

    Same values as ``F.binary_cross_entropy_with_logits`` up to float rounding. Written with
    two allocations and in-place steps: at LVIS scale each fresh (R, K) tensor costs as much as
    the arithmetic, and torch's log1p is not vectorised on CPU.
    """
    abs_logits = logits.abs()
    loss = torch.sigmoid(abs_logits).log_().neg_()  # log(1 + exp(-|z|))
    # max(z, 0) = (z + |z|) / 2
    loss = loss.add_(abs_logits, alpha=0.5).add_(logits, alpha=0.5)
    return loss.addcmul_(logits, targets, value=-1)


def bce_logit_grad(logits, targets, scale=None):
    """dBCE(z, y)/dz = sigmoid(z) - y, times ``scale`` (None: 1), as a new tensor: the closed-form
    backward of the fused BCE losses."""
    grad = torch.sigmoid(logits).sub_(targets)
    return grad if scale is None else grad.mul_(scale)


class _WeightedBCESum(torch.autograd.Function):
    """sum_ij w_ij BCE(z_ij, y_ij) with the closed-form gradient w (sigmoid(z) - y): one pass
    forward, one backward, instead of autograd's chain through every element-wise op."""

    @staticmethod
    def forward(ctx, logits, targets, weights):
        loss = bce_with_logits(logits, targets)
        if weights is not None:
            loss.mul_(weights)
        ctx.save_for_backward(logits, targets, weights)
        return loss.sum()

    @staticmethod
    def backward(ctx, grad):
        logits, targets, weights = ctx.saved_tensors
        return bce_logit_grad(logits, targets, weights).mul_(grad), None, None


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
    if weights is not None:
        weights = weights.detach().expand_as(logits)
    return _WeightedBCESum.apply(logits, targets.detach(), weights) / logits.shape[0]


def is_distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_(*tensors):
    """Sum ``tensors`` in place over all processes; a no-op on a single process."""
    if not is_distributed():
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
