# Copyright (c) lt_d2 contributors.
"""MODEL.LT.NORM_EVAL: backbone batch norm with frozen statistics and trainable affine params."""
import copy

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone
from detectron2.solver import build_optimizer
from torch import nn
from torch.nn import functional as F

from lt_d2.config import add_lt_config
from lt_d2.engine.freeze import freeze_all_but
from lt_d2.modeling.backbone import NormEvalBatchNorm2d, convert_norm_eval

STAGES = '["res2", "res3", "res4", "res5"]'


def _cfg(*opts):
    cfg = add_lt_config(get_cfg())
    cfg.merge_from_list(["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
                         "MODEL.RESNETS.NORM", "BN", "MODEL.RESNETS.STRIDE_IN_1X1", "False",
                         "MODEL.RESNETS.OUT_FEATURES", STAGES, "MODEL.FPN.IN_FEATURES", STAGES,
                         "MODEL.LT.NORM_EVAL", "True", *opts])
    return cfg


def _random_bn(bn, generator):
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.copy_(torch.randn(t.shape, generator=generator))
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=generator) + 0.5)


def test_train_mode_uses_and_keeps_running_stats_and_trains_affine():
    g = torch.Generator().manual_seed(0)
    bn = NormEvalBatchNorm2d.from_batchnorm(nn.BatchNorm2d(6))
    _random_bn(bn, g)
    bn.train()
    stats = [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]
    x = torch.randn(4, 6, 5, 5, generator=g, requires_grad=True)
    out = bn(x)
    expected = F.batch_norm(x, stats[0], stats[1], bn.weight, bn.bias, training=False, eps=bn.eps)
    assert torch.allclose(out, expected, atol=1e-6)
    # a training-mode BatchNorm2d would normalise with the batch statistics instead
    assert not torch.allclose(out, F.batch_norm(x, None, None, bn.weight, bn.bias, True), atol=1e-3)
    (out * torch.randn(out.shape, generator=g)).sum().backward()
    assert all(torch.equal(a, b) for a, b in
               zip(stats, [bn.running_mean, bn.running_var, bn.num_batches_tracked]))
    assert bn.weight.grad.abs().sum() > 0 and bn.bias.grad.abs().sum() > 0
    assert x.grad is not None
    # same state-dict keys as BatchNorm2d: checkpoints load both ways
    plain = nn.BatchNorm2d(6)
    plain.load_state_dict(bn.state_dict())
    assert set(plain.state_dict()) == set(bn.state_dict())
    assert bn.load_state_dict(plain.state_dict()) is not None


@pytest.mark.parametrize("name", ["build_lt_resnet_fpn_backbone", "build_lt_resnet_backbone"])
def test_backbones_convert_every_trainable_batchnorm(name):
    cfg = _cfg("MODEL.BACKBONE.FREEZE_AT", "2", "MODEL.FPN.NORM", "BN")
    backbone = BACKBONE_REGISTRY.get(name)(cfg, ShapeSpec(channels=3))
    resnet = getattr(backbone, "bottom_up", backbone)
    kinds = {type(m) for m in resnet.modules()}
    assert NormEvalBatchNorm2d in kinds and FrozenBatchNorm2d in kinds  # stem, res2 stay frozen
    assert not [m for m in resnet.modules()
                if type(m) in (nn.BatchNorm2d, nn.SyncBatchNorm)]
    assert isinstance(resnet.stem.conv1.norm, FrozenBatchNorm2d)
    assert isinstance(resnet.res3[0].conv1.norm, NormEvalBatchNorm2d)
    # FPN's own norms train as usual (mmdet: ResNet only)
    if name == "build_lt_resnet_fpn_backbone":
        assert type(backbone.fpn_lateral2.norm) is nn.BatchNorm2d
    # trainable: the affine parameters still take gradients and weight decay groups see BN
    assert resnet.res3[0].conv1.norm.weight.requires_grad


def test_off_builds_exactly_detectron2s_backbone():
    cfg = _cfg("MODEL.LT.NORM_EVAL", "False", "MODEL.RESNETS.NORM", "FrozenBN")
    torch.manual_seed(0)
    ours = BACKBONE_REGISTRY.get("build_lt_resnet_fpn_backbone")(cfg, ShapeSpec(channels=3))
    torch.manual_seed(0)
    theirs = build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))
    assert repr(ours) == repr(theirs)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("norm", ["SyncBN", "FrozenBN", "GN"])
def test_norm_eval_needs_bn(norm):
    with pytest.raises(ValueError, match=r"MODEL.LT.NORM_EVAL.*MODEL.RESNETS.NORM"):
        BACKBONE_REGISTRY.get("build_lt_resnet_backbone")(
            _cfg("MODEL.RESNETS.NORM", norm), ShapeSpec(channels=3))


def test_backbone_in_train_mode_equals_eval_mode_and_keeps_stats():
    cfg = _cfg("MODEL.BACKBONE.FREEZE_AT", "0")
    backbone = BACKBONE_REGISTRY.get("build_lt_resnet_fpn_backbone")(cfg, ShapeSpec(channels=3))
    g = torch.Generator().manual_seed(1)
    for m in backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            _random_bn(m, g)
    before = copy.deepcopy(backbone.state_dict())
    x = torch.randn(2, 3, 64, 64, generator=g)
    backbone.eval()
    expected = backbone(x)
    backbone.train()
    out = backbone(x)
    assert all(torch.allclose(out[k], expected[k], atol=1e-5) for k in expected)
    sum(v.sum() for v in out.values()).backward()
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the optimizer treats the converted layers as norms (SOLVER.WEIGHT_DECAY_NORM)
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    groups = build_optimizer(cfg, backbone).param_groups
    bn_weight = backbone.bottom_up.res3[0].conv1.norm.weight
    assert [gr["weight_decay"]
            for gr in groups if any(p is bn_weight for p in gr["params"])] == [0.0]


def test_stage_two_freezing_turns_frozen_layers_into_frozen_batchnorm():
    backbone = BACKBONE_REGISTRY.get("build_lt_resnet_backbone")(
        _cfg("MODEL.BACKBONE.FREEZE_AT", "0"), ShapeSpec(channels=3))
    model = nn.Sequential()
    model.add_module("backbone", backbone)
    freeze_all_but(model, ["backbone.res5"])
    assert isinstance(backbone.res4[0].conv1.norm, FrozenBatchNorm2d)
    assert isinstance(backbone.res5[0].conv1.norm, NormEvalBatchNorm2d)
    assert backbone.res5[0].conv1.norm.weight.requires_grad


def test_autocast_and_convert_of_a_bare_layer():
    bn = convert_norm_eval(nn.BatchNorm2d(3))
    assert type(bn) is NormEvalBatchNorm2d
    conv = nn.Conv2d(3, 3, 1)
    x = torch.randn(2, 3, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bn(conv(x))
    assert out.shape == x.shape and torch.isfinite(out.float()).all()
