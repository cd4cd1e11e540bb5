# Copyright (c) lt_d2 contributors.
from .trainer import LTTrainer, check_config, check_num_classes, write_eval_metrics
