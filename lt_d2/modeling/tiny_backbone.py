# Copyright (c) lt_d2 contributors.
"""A small convolutional backbone (+ FPN) that trains from scratch on a CPU in minutes.

It exists for the synthetic long-tailed dataset, the demo and the tests; LVIS configs use
detectron2's ResNets. Stages mirror ResNet's names and strides (res2: 4 ... res5: 32) so every
detectron2 head and FPN config works unchanged.
"""
import fvcore.nn.weight_init as weight_init
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from torch import nn
from torch.nn import functional as F

STAGE_NAMES = ("res2", "res3", "res4", "res5")


def _conv_norm(in_ch, out_ch, stride, norm):
    conv = Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=not norm,
                  norm=get_norm(norm, out_ch), activation=F.relu)
    weight_init.c2_msra_fill(conv)
    return conv


class TinyNet(Backbone):
    """Stem (two stride-2 convs) then three stages of (stride-2 conv, conv).

    Args:
        in_channels (int): image channels.
        channels (list[int]): output channels of res2..res5.
        norm (str): detectron2 norm name ("BN", "GN", "SyncBN", "" for none).
        out_features (list[str]): stages to return.
    """

    def __init__(self, in_channels, channels, norm, out_features):
        super().__init__()
        if len(channels) != len(STAGE_NAMES):
            raise ValueError(
                f"MODEL.TINY_NET.CHANNELS needs {len(STAGE_NAMES)} values, got {channels}")
        unknown = set(out_features) - set(STAGE_NAMES)
        if unknown:
            raise ValueError(
                f"Unknown MODEL.TINY_NET.OUT_FEATURES {sorted(unknown)}; use {STAGE_NAMES}")
        self.stages = nn.ModuleDict()
        prev = in_channels
        for i, (name, ch) in enumerate(zip(STAGE_NAMES, channels)):
            first = [_conv_norm(prev, ch // 2 if i == 0 else ch, 2, norm)]
            if i == 0:  # stem: two stride-2 convs reach stride 4
                first.append(_conv_norm(ch // 2, ch, 2, norm))
            self.stages[name] = nn.Sequential(*first, _conv_norm(ch, ch, 1, norm))
            prev = ch
        self._out_features = list(out_features)
        self._out_feature_channels = dict(zip(STAGE_NAMES, channels))
        self._out_feature_strides = {n: 4 * 2**i for i, n in enumerate(STAGE_NAMES)}

    def forward(self, x):
        outputs = {}
        for name, stage in self.stages.items():
            x = stage(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self):
        return {
            n: ShapeSpec(
                channels=self._out_feature_channels[n], stride=self._out_feature_strides[n])
            for n in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_tiny_net_backbone(cfg, input_shape):
    return TinyNet(input_shape.channels, cfg.MODEL.TINY_NET.CHANNELS, cfg.MODEL.TINY_NET.NORM,
                   cfg.MODEL.TINY_NET.OUT_FEATURES)


@BACKBONE_REGISTRY.register()
def build_tiny_net_fpn_backbone(cfg, input_shape):
    """TinyNet + detectron2's FPN (P2-P6), configured by the usual ``MODEL.FPN`` keys."""
    return FPN(
        bottom_up=build_tiny_net_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
