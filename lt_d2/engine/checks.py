# Copyright (c) lt_d2 contributors.
"""Checks that fail early, with the fix, on settings that would only fail deep inside training
or evaluation."""
import torch
from detectron2.data import MetadataCatalog

from ..config import is_multilabel, model_num_classes
from ..data import check_dataset_files


def check_num_classes(cfg, dataset_name):
    """Raise if the model's number of classes differs from the dataset's."""
    classes = MetadataCatalog.get(dataset_name).get("thing_classes", None)
    num_classes, key = model_num_classes(cfg)
    if classes is not None and len(classes) != num_classes:
        raise ValueError(
            f"{key} is {num_classes} but dataset '{dataset_name}' has {len(classes)} classes. "
            f"Set {key} {len(classes)} in the config or on the command line."
        )


def check_config(cfg, training=True):
    """Fail early, with the fix, on settings that would only fail deep inside training.
    ``training=False`` (``--eval-only``): the training sets need not exist, as the model reads
    everything it needs at inference from its checkpoint."""
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"MODEL.DEVICE is '{cfg.MODEL.DEVICE}' but no CUDA device is available. "
            "Add `MODEL.DEVICE cpu` to the command line to run on the CPU."
        )
    for name in (list(cfg.DATASETS.TRAIN) if training else []) + list(cfg.DATASETS.TEST):
        check_dataset_files(name)
        multilabel_data = MetadataCatalog.get(name).get("evaluator_type", None) == "multilabel"
        if multilabel_data != is_multilabel(cfg):
            kind = "multi-label classification" if multilabel_data else "detection"
            raise ValueError(
                f"Dataset '{name}' is a {kind} dataset but MODEL.META_ARCHITECTURE is "
                f"{cfg.MODEL.META_ARCHITECTURE}. Use "
                "MultiLabelClassifier with multi-label datasets (coco_mlt_*, voc_mlt_*, "
                "ml_synthetic_*) and a detector with detection datasets."
            )
    if is_multilabel(cfg) and cfg.TEST.AUG.ENABLED:
        raise ValueError("TEST.AUG (detection test-time augmentation) does not apply to "
                         "MultiLabelClassifier; set TEST.AUG.ENABLED False.")
