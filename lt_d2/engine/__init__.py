# Copyright (c) lt_d2 contributors.
from .checks import check_config, check_num_classes
from .metrics_json import write_eval_metrics
from .trainer import LTTrainer
