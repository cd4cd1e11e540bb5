# Copyright (c) lt_d2 contributors.
from . import losses
from .backbone import NormEvalBatchNorm2d, build_lt_resnet_backbone, build_lt_resnet_fpn_backbone
from .box_predictor import CosineLinear, LTFastRCNNOutputLayers, LWSLinear
from .multilabel_classifier import MultiLabelClassifier, PooledFCNeck
from .roi_heads import LTCascadeROIHeads, LTROIHeads
from .tiny_backbone import TinyNet, build_tiny_net_backbone, build_tiny_net_fpn_backbone
