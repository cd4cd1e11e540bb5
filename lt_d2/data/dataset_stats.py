# Copyright (c) lt_d2 contributors.
"""Class statistics of registered datasets: the one place the model's statistics come from.

:func:`get_class_stats` reads a dataset's statistics from its metadata (the keys of
:mod:`lt_d2.data.class_stats`); when they are absent it computes them from the dataset's files
with the pure function of its format (a ``class_stats_file``, multi-label annotations, or an
LVIS / COCO json) and stores what the files say in the metadata, as loading the dataset would.
``lt_d2/__init__.py`` hands :func:`train_class_stats` to the losses.
"""
import logging
import os

from detectron2.data import MetadataCatalog

from .catalog import fill_metadata
from .class_stats import class_stats_from_metadata, class_stats_metadata
from .datasets import lt_json_metadata, read_lt_json
from .multilabel_datasets import class_stats_from_file, multilabel_metadata

logger = logging.getLogger(__name__)

__all__ = ["get_class_stats", "train_class_stats"]


def _metadata_from_files(name, meta):
    """What the files of dataset ``name`` say (its class statistics among it), and the file."""
    stats_file = meta.get("class_stats_file", None)
    if stats_file is not None and os.path.isfile(stats_file):
        logger.info("Reading class statistics of '%s' from %s", name, stats_file)
        id_map = meta.get("thing_dataset_id_to_contiguous_id", None)
        return class_stats_metadata(class_stats_from_file(stats_file), id_map), stats_file
    json_file = meta.get("json_file", None)
    if json_file is None:
        raise ValueError(
            f"Dataset '{name}' has no class statistics in its metadata and no json_file to "
            "compute them from. Register it with lt_d2.data.register_lt_dataset or "
            "register_multilabel_dataset, or store them with "
            "lt_d2.data.class_stats.set_class_stats.")
    logger.info("Computing class statistics of '%s' from %s", name, json_file)
    if meta.get("evaluator_type", None) == "multilabel":
        return multilabel_metadata(json_file, meta.get("image_ids_file", None), name), json_file
    return lt_json_metadata(read_lt_json(json_file, name)), json_file


def get_class_stats(dataset_names):
    """Class statistics of the union of training datasets ``dataset_names``.

    Read from each dataset's metadata; computed from its files (and stored in the metadata)
    when absent. A missing file raises FileNotFoundError naming the dataset, the file and the
    expected layout.
    """
    if isinstance(dataset_names, str):
        dataset_names = [dataset_names]
    total = None
    for name in dataset_names:
        meta = MetadataCatalog.get(name)
        stats = class_stats_from_metadata(meta)
        if stats is None:
            fill_metadata(name, *_metadata_from_files(name, meta))
            stats = class_stats_from_metadata(meta)
        total = stats if total is None else total + stats
    return total


def train_class_stats(cfg, consequence, errors=(FileNotFoundError,)):
    """Class statistics of ``cfg.DATASETS.TRAIN``, or None when the config names no training
    set or reading it raises one of ``errors`` (logged as a warning with ``consequence``, what
    goes without them). Models and evaluators that only use them build without them."""
    if not cfg.DATASETS.TRAIN:
        return None
    try:
        return get_class_stats(list(cfg.DATASETS.TRAIN))
    except errors as e:
        logger.warning("Class statistics of DATASETS.TRAIN unavailable (%s); %s", e, consequence)
        return None
