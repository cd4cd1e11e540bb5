# Copyright (c) lt_d2 contributors.
from . import losses
from .box_predictor import CosineLinear, LTFastRCNNOutputLayers, LWSLinear
from .multilabel_classifier import MultiLabelClassifier, PooledFCNeck
from .roi_heads import LTCascadeROIHeads, LTROIHeads
from .tiny_backbone import TinyNet, build_tiny_net_backbone, build_tiny_net_fpn_backbone
