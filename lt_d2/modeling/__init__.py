# Copyright (c) lt_d2 contributors.
from .box_predictor import LTFastRCNNOutputLayers
from .roi_heads import LTCascadeROIHeads, LTROIHeads
from .tiny_backbone import TinyNet, build_tiny_net_backbone, build_tiny_net_fpn_backbone
