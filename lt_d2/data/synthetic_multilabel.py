# Copyright (c) lt_d2 contributors.
"""A synthetic long-tailed multi-label dataset, built the way COCO-MLT / VOC-MLT were.

A balanced pool of coloured-shape images (the classes of :mod:`lt_d2.data.synthetic`) is drawn
with structured label co-occurrence: classes form groups of ``group_size`` and an image's extra
labels come mostly from the group of its first label, so tail classes co-occur with head
classes as in natural scenes. The long-tailed training subset is then chosen from the pool by
:func:`~lt_d2.data.longtail_subset.create_longtail_dataset` (Pareto targets, co-occurrence
order) and the test set is a second, balanced pool. Everything is deterministic from ``seed``.

Layout of ``out_dir``: ``annotations/{pool,test}.json`` (COCO format), ``pool/``, ``test/``
(images), ``longtail/{img_id,class_stats}.json``.
"""
import json
import logging
import os

import numpy as np

from .longtail_subset import create_longtail_dataset
from .synthetic import build_split, building_dataset_dir, category_entries

logger = logging.getLogger(__name__)

__all__ = ["generate_synthetic_multilabel", "draw_label_sets"]


def draw_label_sets(rng, num_images, num_classes, group_size=4, extra_label_probs=(0.6, 0.3, 0.1),
                    in_group_prob=0.5):
    """Label sets of ``num_images`` images: a uniform first class, then 0, 1, 2... extra classes
    (probabilities ``extra_label_probs``), each from the first class's group with probability
    ``in_group_prob``, else from any class."""
    images = []
    for _ in range(num_images):
        first = int(rng.integers(num_classes))
        group = range((first // group_size) * group_size,
                      min((first // group_size + 1) * group_size, num_classes))
        labels = {first}
        num_extra = int(rng.choice(len(extra_label_probs), p=extra_label_probs))
        for _ in range(num_extra):
            pool = group if rng.random() < in_group_prob else range(num_classes)
            candidates = [c for c in pool if c not in labels]
            if candidates:
                labels.add(int(candidates[int(rng.integers(len(candidates)))]))
        images.append(sorted(labels))
    return images


def _write_split(rng, tmp, split, label_sets, num_classes, image_size, min_size, max_size):
    images, anns = build_split(rng, split, label_sets, num_classes, image_size, tmp, 0.0,
                               min_size, max_size)
    for img in images:  # COCO, not LVIS: no federated annotation fields
        img.pop("neg_category_ids"), img.pop("not_exhaustive_category_ids")
        img.pop("coco_url")
    image_counts = np.zeros(num_classes, np.int64)
    for labels in label_sets:
        image_counts[labels] += 1
    instance_counts = np.bincount([a["category_id"] - 1 for a in anns], minlength=num_classes)
    categories = [{k: c[k] for k in ("id", "name")} for c in
                  category_entries(num_classes, image_counts, instance_counts)]
    data = {"info": {"description": f"lt_d2 synthetic multi-label {split} pool"},
            "categories": categories, "images": images, "annotations": anns}
    path = os.path.join(tmp, "annotations", f"{split}.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def generate_synthetic_multilabel(out_dir, *, seed=0, num_classes=20, pool_images=11540,
                                  test_images=1000, max_count=800, image_size=64, min_size=14,
                                  max_size=28):
    """Write the dataset to ``out_dir`` (see the module docstring); return the path.

    The defaults mirror VOC-MLT: 20 classes, a pool the size of VOC 2012 trainval, Pareto
    targets from 800 images down; the subset has about 1,260 images and 5 / 6 / 9 head /
    medium / tail classes (VOC-MLT: 1,142 and 6 / 6 / 8).

    Built in a temporary folder beside ``out_dir`` and moved into place only when complete.
    """
    rng = np.random.default_rng(seed)
    with building_dataset_dir(out_dir) as tmp:
        pool = _write_split(rng, tmp, "pool", draw_label_sets(rng, pool_images, num_classes),
                            num_classes, image_size, min_size, max_size)
        _write_split(rng, tmp, "test", draw_label_sets(rng, test_images, num_classes),
                     num_classes, image_size, min_size, max_size)
        create_longtail_dataset(pool, os.path.join(tmp, "longtail"), "coco",
                                max_count=max_count, seed=seed)
    logger.info("Wrote the synthetic multi-label dataset to %s", out_dir)
    return out_dir
