# Copyright (c) lt_d2 contributors.
"""detectron2's ResNet backbones with the batch-norm convention of the mmdetection seed projects.

EQL / EQLv2, BACL and ACSL train torchvision ResNets with ``norm_cfg=dict(type='BN',
requires_grad=True), norm_eval=True``: every batch-norm layer normalises with the running
statistics it was loaded with (as in eval mode) and never updates them, while its weight and
bias train. detectron2 has no such layer (its "BN" updates the statistics, "FrozenBN" freezes the
affine parameters too), so ``MODEL.LT.NORM_EVAL`` converts the ResNet's BatchNorm2d layers to
:class:`NormEvalBatchNorm2d` after detectron2 built it.
"""
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn
from torch.nn import functional as F

__all__ = ["NormEvalBatchNorm2d", "build_lt_resnet_backbone", "build_lt_resnet_fpn_backbone",
           "convert_norm_eval"]


class NormEvalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that always normalises with its running statistics and never updates them,
    in train mode too; weight and bias remain trainable parameters.

    A subclass of ``nn.BatchNorm2d`` so that everything that recognises batch norm still does:
    the state-dict keys (checkpoints load both ways), ``SOLVER.WEIGHT_DECAY_NORM``,
    ``FrozenBatchNorm2d.convert_frozen_batchnorm`` (stage-two freezing). Its forward is eval-mode
    batch norm, which autocast (AMP) handles as it does for any BatchNorm2d at test time.
    """

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, momentum=0.0, eps=self.eps)

    @classmethod
    def from_batchnorm(cls, bn):
        """A NormEvalBatchNorm2d that shares ``bn``'s parameters and buffers (the same tensors,
        so ``requires_grad``, device and dtype carry over)."""
        if not (bn.affine and bn.track_running_stats):
            raise ValueError(f"{bn} needs affine=True and track_running_stats=True to become a "
                             "NormEvalBatchNorm2d (detectron2's 'BN' has both).")
        new = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, device="meta")
        new.weight, new.bias = bn.weight, bn.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(new, name, getattr(bn, name))
        new.train(bn.training)
        return new


def convert_norm_eval(module):
    """Replace every ``nn.BatchNorm2d`` inside ``module`` (detectron2's "BN" included) with a
    :class:`NormEvalBatchNorm2d` in place; FrozenBatchNorm2d (frozen stages) and other norms stay.
    Returns ``module``, or the new layer if ``module`` itself is a BatchNorm2d."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, NormEvalBatchNorm2d):
        return NormEvalBatchNorm2d.from_batchnorm(module)
    for name, child in module.named_children():
        new = convert_norm_eval(child)
        if new is not child:
            setattr(module, name, new)
    return module


def _check_norm(cfg):
    norm = cfg.MODEL.RESNETS.NORM
    if norm != "BN":
        raise ValueError(
            f"MODEL.LT.NORM_EVAL is True but MODEL.RESNETS.NORM is {norm!r}: frozen-statistics "
            "batch norm needs MODEL.RESNETS.NORM 'BN' (the statistics never change, so 'SyncBN' "
            "brings nothing; 'FrozenBN' freezes the affine parameters too). Set "
            "MODEL.RESNETS.NORM 'BN', or MODEL.LT.NORM_EVAL False.")


@BACKBONE_REGISTRY.register()
def build_lt_resnet_backbone(cfg, input_shape):
    """detectron2's ``build_resnet_backbone``; with ``MODEL.LT.NORM_EVAL`` its batch norms keep
    their running statistics (:class:`NormEvalBatchNorm2d`)."""
    if not cfg.MODEL.LT.NORM_EVAL:
        return build_resnet_backbone(cfg, input_shape)
    _check_norm(cfg)
    return convert_norm_eval(build_resnet_backbone(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def build_lt_resnet_fpn_backbone(cfg, input_shape):
    """detectron2's ``build_resnet_fpn_backbone``; with ``MODEL.LT.NORM_EVAL`` the ResNet's batch
    norms keep their running statistics. Only the ResNet (``bottom_up``) converts, as
    mmdetection's ``norm_eval`` is an option of the ResNet: a ``MODEL.FPN.NORM`` "BN" trains as
    usual."""
    if not cfg.MODEL.LT.NORM_EVAL:
        return build_resnet_fpn_backbone(cfg, input_shape)
    _check_norm(cfg)
    backbone = build_resnet_fpn_backbone(cfg, input_shape)
    convert_norm_eval(backbone.bottom_up)
    return backbone
