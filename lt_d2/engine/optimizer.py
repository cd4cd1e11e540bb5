# Copyright (c) lt_d2 contributors.
"""Gradient clipping of the whole model, for ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model"``."""
import torch


def with_full_model_clipping(optimizer, max_norm, norm_type=2.0):
    """``optimizer`` whose ``step`` first scales all gradients so that their joint norm is at
    most ``max_norm`` (torch's ``clip_grad_norm_`` over every parameter, as mmcv's grad_clip;
    detectron2's "norm" clipping bounds each parameter's norm separately)."""
    base = type(optimizer)

    class FullModelClipped(base):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure)

    FullModelClipped.__name__ = f"FullModelClipped{base.__name__}"
    optimizer.__class__ = FullModelClipped
    return optimizer
