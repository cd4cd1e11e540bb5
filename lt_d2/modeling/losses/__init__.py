# Copyright (c) lt_d2 contributors.
"""ROI classification losses: ``CLS_LOSS_REGISTRY`` names them for ``MODEL.LT.CLS_LOSS``.

Each file holds one loss: a plain function with its math (``<name>_loss``, returning the loss)
and the registered module that holds its configuration and state (``<Name>Loss``).
"""
from .acsl import ACSLLoss, acsl_loss, acsl_weights
from .base import (
    CLS_LOSS_REGISTRY,
    DEPRECATED_CLS_LOSS_NAMES,
    LTClassificationLoss,
    build_cls_loss,
    resolve_cls_loss_name,
)
from .distribution_balanced import DistributionBalancedLoss, distribution_balanced_loss
from .eql import EQLLoss, eql_loss
from .eqlv2 import EQLv2Loss, eqlv2_loss
from .fcbl import FCBLLoss, fcbl_loss
from .federated import FederatedLoss, federated_classes, federated_loss
from .group_softmax import GroupSoftmaxLoss, group_softmax_loss, group_softmax_probs
from .seesaw import SeesawLoss, seesaw_loss, seesaw_objectness_loss
from .sigmoid_ce import SigmoidCELoss, sigmoid_ce_loss
from .softmax_ce import SoftmaxCELoss, softmax_ce_loss
