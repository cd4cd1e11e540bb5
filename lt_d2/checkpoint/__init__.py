# Copyright (c) lt_d2 contributors.
from .surgery import (
    SurgeryError,
    checkpoint_surgery,
    default_output_path,
    load_checkpoint,
    save_checkpoint,
)
