# Copyright (c) lt_d2 contributors.
"""lt_d2: long-tailed object detection methods for Detectron2."""
from . import compat

compat.apply_all()  # before anything imports detectron2.data (Pillow >= 10)

# registration of datasets, samplers and modules, and of the torchvision:// weights paths
from . import checkpoint, data, modeling  # noqa: E402
from .config import add_lt_config  # noqa: E402

__version__ = "0.1.0"
