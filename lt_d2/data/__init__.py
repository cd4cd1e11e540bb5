# Copyright (c) lt_d2 contributors.
from .class_stats import ClassStats, get_class_stats
from .datasets import check_dataset_files, load_lt_json, register_all_builtin, register_lt_dataset
from .samplers import SAMPLER_REGISTRY, ClassAwareSampler, build_training_sampler, images_per_class
from .synthetic import generate_synthetic_lt

register_all_builtin()
