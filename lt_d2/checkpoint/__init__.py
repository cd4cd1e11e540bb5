# Copyright (c) lt_d2 contributors.
from .surgery import (
    SurgeryError,
    checkpoint_surgery,
    default_output_path,
    load_checkpoint,
    save_checkpoint,
)
from .torchvision_weights import TorchvisionHandler, convert_torchvision_resnet
from .torchvision_weights import register as _register_torchvision

_register_torchvision()  # torchvision:// paths for MODEL.WEIGHTS, on `import lt_d2`
