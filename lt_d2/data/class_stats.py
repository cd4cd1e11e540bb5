# Copyright (c) lt_d2 contributors.
"""Per-class training statistics: the one place losses and samplers read them from.

Stored in a dataset's metadata under these keys (``class_image_count`` uses detectron2 main's
format, so its federated loss reads our statistics too):

* ``class_image_count``: list of ``{"id": dataset category id, "image_count": int}``;
* ``class_instance_count``: list of ``{"id": ..., "instance_count": int}``;
* ``class_frequency``: list of "r" / "c" / "f" by contiguous class index;
* ``class_stats_num_images``: number of training images with at least one annotation.

When a dataset's metadata lacks them, :func:`get_class_stats` computes them from its json.
"""
import logging
import os
from dataclasses import dataclass

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..grouping import check_lvis_frequency, lvis_frequency

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class ClassStats:
    """Training statistics of K classes, indexed by contiguous class id (0..K-1)."""

    image_count: np.ndarray  # (K,) number of training images that contain the class
    instance_count: np.ndarray  # (K,) number of training instances of the class
    frequency: np.ndarray  # (K,) "r" / "c" / "f"
    num_images: int  # training images with at least one annotation

    @property
    def num_classes(self):
        return len(self.image_count)

    def group(self, name):
        """Contiguous class ids of frequency group ``name`` ("r", "c" or "f")."""
        return np.nonzero(self.frequency == check_lvis_frequency(name))[0]

    def __add__(self, other):
        if self.num_classes != other.num_classes:
            raise ValueError("Cannot combine statistics of datasets with different classes.")
        image_count = self.image_count + other.image_count
        return ClassStats(image_count, self.instance_count + other.instance_count,
                          lvis_frequency(image_count), self.num_images + other.num_images)


def class_stats_from_annotations(data, id_map):
    """Statistics of a parsed LVIS/COCO json (``id_map``: category id -> contiguous id).

    Counts come from the annotations; the frequency group comes from the categories'
    ``frequency`` field where present (LVIS's own labels), else from LVIS's rule.
    """
    num_classes = len(id_map)
    if data["annotations"]:
        cls = np.fromiter((id_map[a["category_id"]] for a in data["annotations"]), np.int64)
        img = np.fromiter((a["image_id"] for a in data["annotations"]), np.int64)
        pairs = np.unique(np.stack([cls, img], 1), axis=0)
        instance_count = np.bincount(cls, minlength=num_classes)
        image_count = np.bincount(pairs[:, 0], minlength=num_classes)
        num_images = len(np.unique(img))
    else:
        instance_count = image_count = np.zeros(num_classes, np.int64)
        num_images = 0
    frequency = lvis_frequency(image_count)
    for cat in data["categories"]:
        if "frequency" in cat:
            frequency[id_map[cat["id"]]] = cat["frequency"]
    return ClassStats(image_count, instance_count, frequency, num_images)


def set_class_stats(dataset_name, stats):
    """Store ``stats`` in the metadata of ``dataset_name`` (only keys it does not have yet)."""
    meta = MetadataCatalog.get(dataset_name)
    id_map = meta.get("thing_dataset_id_to_contiguous_id", None)
    dataset_ids = sorted(id_map, key=id_map.get) if id_map else range(1, stats.num_classes + 1)
    values = {
        "class_image_count": [
            {"id": int(i), "image_count": int(n)} for i, n in zip(dataset_ids, stats.image_count)
        ],
        "class_instance_count": [
            {"id": int(i), "instance_count": int(n)}
            for i, n in zip(dataset_ids, stats.instance_count)
        ],
        "class_frequency": [str(f) for f in stats.frequency],
        "class_stats_num_images": int(stats.num_images),
    }
    for key, value in values.items():
        if meta.get(key, None) is None:
            meta.set(**{key: value})


def _stats_from_metadata(meta):
    image_meta = meta.get("class_image_count", None)
    num_images = meta.get("class_stats_num_images", None)
    if image_meta is None or num_images is None:
        return None
    image_count = np.array([c["image_count"] for c in sorted(image_meta, key=lambda c: c["id"])])
    inst_meta = meta.get("class_instance_count", None)
    instance_count = (
        np.array([c["instance_count"] for c in sorted(inst_meta, key=lambda c: c["id"])])
        if inst_meta is not None else image_count.copy()
    )
    freq = meta.get("class_frequency", None)
    frequency = np.array(freq) if freq is not None else lvis_frequency(image_count)
    return ClassStats(image_count, instance_count, frequency, num_images)


def _compute_class_stats(name, meta):
    """Put the statistics of dataset ``name`` into its metadata: from its ``class_stats_file``
    if it has one, else from its annotations."""
    from .datasets import check_dataset_files, load_lt_json
    from .multilabel_datasets import class_stats_from_file

    stats_file = meta.get("class_stats_file", None)
    if stats_file is not None and os.path.isfile(stats_file):
        logger.info("Reading class statistics of '%s' from %s", name, stats_file)
        set_class_stats(name, class_stats_from_file(stats_file))
        return
    check_dataset_files(name)
    logger.info("Computing class statistics of '%s' from %s", name, meta.json_file)
    if meta.get("evaluator_type", None) == "multilabel":
        DatasetCatalog.get(name)  # its loader stores the statistics
    else:
        load_lt_json(meta.json_file, meta.get("image_root", ""), name)


def get_class_stats(dataset_names):
    """Class statistics of the union of training datasets ``dataset_names``.

    Read from each dataset's metadata; computed from its ``json_file`` (and stored in the
    metadata) when absent.
    """
    if isinstance(dataset_names, str):
        dataset_names = [dataset_names]
    total = None
    for name in dataset_names:
        meta = MetadataCatalog.get(name)
        stats = _stats_from_metadata(meta)
        if stats is None:
            _compute_class_stats(name, meta)
            stats = _stats_from_metadata(meta)
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
