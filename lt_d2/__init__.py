# Copyright (c) lt_d2 contributors.
"""lt_d2: long-tailed object detection methods for Detectron2."""
from . import compat

compat.apply_all()  # before anything imports detectron2.data (Pillow >= 10)

# registration of datasets, samplers and modules, and of the torchvision:// weights paths
from . import checkpoint, data, modeling  # noqa: E402
from .config import add_lt_config  # noqa: E402

# Class statistics flow one way, data -> model: the losses read the training statistics through
# this function (unless given others), and lt_d2.modeling never imports lt_d2.data.
# (looked up at each call, so that patching lt_d2.data.dataset_stats.train_class_stats works)
modeling.losses.base.set_train_stats_source(
    lambda cfg, consequence: data.dataset_stats.train_class_stats(cfg, consequence))

__version__ = "0.1.0"
