# Copyright (c) lt_d2 contributors.
"""Per-class training statistics: what they are and how a dataset's metadata stores them.

Stored in a dataset's metadata under these keys (``class_image_count`` uses detectron2 main's
format, so its federated loss reads our statistics too):

* ``class_image_count``: list of ``{"id": dataset category id, "image_count": int}``;
* ``class_instance_count``: list of ``{"id": ..., "instance_count": int}``;
* ``class_frequency``: list of "r" / "c" / "f" by contiguous class index;
* ``class_stats_num_images``: number of training images with at least one annotation.

The registered loaders (:mod:`lt_d2.data.datasets`, :mod:`lt_d2.data.multilabel_datasets`) put
them there; :func:`lt_d2.data.dataset_stats.get_class_stats` reads them, or computes them from
the dataset's files when the metadata lacks them.
"""
from dataclasses import dataclass

import numpy as np
from detectron2.data import MetadataCatalog

from ..grouping import check_lvis_frequency, lvis_frequency
from .catalog import fill_metadata

__all__ = ["ClassStats", "class_stats_from_annotations", "class_stats_from_metadata",
           "class_stats_metadata", "set_class_stats"]


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


def class_stats_metadata(stats, id_map=None):
    """``stats`` as the metadata keys above; ``id_map`` (dataset category id -> contiguous id)
    names the classes, default ids 1..K."""
    dataset_ids = sorted(id_map, key=id_map.get) if id_map else range(1, stats.num_classes + 1)
    return {
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


def set_class_stats(dataset_name, stats):
    """Store ``stats`` in the metadata of ``dataset_name`` (only keys it does not have yet)."""
    id_map = MetadataCatalog.get(dataset_name).get("thing_dataset_id_to_contiguous_id", None)
    fill_metadata(dataset_name, class_stats_metadata(stats, id_map))


def class_stats_from_metadata(meta):
    """The :class:`ClassStats` a dataset's metadata holds, or None if it has none."""
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
