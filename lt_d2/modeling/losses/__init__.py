# Copyright (c) lt_d2 contributors.
"""ROI classification losses: ``CLS_LOSS_REGISTRY`` names them for ``MODEL.LT.CLS_LOSS``."""
from .base import CLS_LOSS_REGISTRY, LTClassificationLoss, build_cls_loss
from .acsl import ACSLLoss, acsl_weights
from .distribution_balanced import DistributionBalancedLoss, distribution_balanced_loss
from .eql import EQLLoss, eql_loss
from .eqlv2 import EQLv2Loss, eqlv2_loss
from .fcbl import FCBLoss, fcbl_loss
from .federated import FederatedLoss, federated_classes
from .group_softmax import GroupSoftmaxLoss, group_softmax_loss, group_softmax_probs
from .seesaw import SeesawLoss, seesaw_loss
from .sigmoid_ce import SigmoidCE, sigmoid_ce_loss
from .softmax_ce import SoftmaxCE
