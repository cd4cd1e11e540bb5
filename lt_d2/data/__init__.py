# Copyright (c) lt_d2 contributors.
from .builtin import register_all_builtin
from .catalog import check_dataset_files
from .class_stats import ClassStats
from .dataset_stats import get_class_stats
from .datasets import load_lt_json, register_lt_dataset
from .samplers import SAMPLER_REGISTRY, ClassAwareSampler, build_training_sampler, images_per_class
from .synthetic import generate_synthetic_lt

register_all_builtin()
