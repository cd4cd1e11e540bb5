# Copyright (c) lt_d2 contributors.
"""Long-tailed multi-label subsets of COCO / VOC (COCO-MLT, VOC-MLT of the Distribution-Balanced
loss paper, Wu et al., ECCV 2020), drawn from a full multi-label pool.

1. Targets: a Pareto(b=6) density sampled at C evenly spaced points between its 0 and 0.99
   quantiles and rescaled to ``[min_count, max_count]``; ``targets[k]`` is the number of images
   wanted for the k-th class of the order below.
2. Order: class j's score is sum_i P(j | i) over the pool, i.e. how much it is dragged in by the
   images of every other class. Classes that come along with many others go first, so the classes
   visited last (the rare tail) are corrected last and end up closest to their targets.
3. Greedy: for each class in that order, randomly add images containing it (or drop selected
   ones) until its current image count equals its target. Images carry other labels too, so the
   final counts of earlier classes drift from their targets; the result is still long-tailed.

Step 3 makes the same random draws as the original script (``random.seed(0)``, ``random.sample``
on Python sets of pool indices), so on the same pool in the same order and under CPython it
selects the same images: on VOC 2012 trainval it gives the published 1,142-image VOC-MLT list.

Splits follow the paper: head >= 100 images, medium 20-99, tail < 20 (counted in the subset).

This is the offline step (``tools/create_longtail_dataset.py``); the subset it writes is loaded
by :mod:`lt_d2.data.multilabel_datasets`, and both read annotations with
:mod:`lt_d2.data.multilabel_annotations`.
"""
import logging
import math
import os
import random

import numpy as np

from ..file_io import check_output_path, write_json_atomic
from ..grouping import SPLIT_HEAD_MIN_IMAGES, SPLIT_TAIL_BELOW_IMAGES, head_medium_tail
from .multilabel_annotations import read_multilabel_annotations

logger = logging.getLogger(__name__)

DEFAULT_MAX_COUNT = {"coco": 1200, "voc": 800}
PARETO_TAIL_QUANTILE = 0.99
OUTPUT_FILES = ("img_id.json", "class_stats.json")


def pareto_targets(num_classes, max_count, min_count=1, shape=6):
    """Images wanted per class rank: ``int(pdf(x_k) * (max - min) / shape + min)``."""
    if num_classes < 1 or shape <= 0 or not 0 <= min_count <= max_count:
        raise ValueError(f"Need num_classes >= 1, shape > 0 and 0 <= min_count <= max_count; got "
                         f"{num_classes}, {shape}, {min_count}, {max_count}.")
    x_end = (1.0 - PARETO_TAIL_QUANTILE) ** (-1.0 / shape)
    x = np.linspace(1.0, x_end, num_classes)
    density = shape / x ** (shape + 1)
    return [int(v) for v in density * (max_count - min_count) / shape + min_count]


def _binary(labels):
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be an (images, classes) array, got shape {labels.shape}.")
    return (labels > 0).astype(np.int64)


def cooccurrence_order(labels):
    """Classes by descending ``sum_i P(j | i)``; ties keep the lower class index first.

    A class without images has no P(. | i) row (0/0 in the original, which turns every score
    into NaN); here its row is zero, so it only scores 0 itself and goes last.
    """
    labels = _binary(labels)
    joint = labels.T @ labels  # joint[i, j]: images with both i and j
    image_count = np.diag(joint)
    conditional = np.zeros(joint.shape, dtype=np.float64)
    present = image_count > 0
    # int / int per row, then a plain axis-0 sum: bit-identical scores to the original
    conditional[present] = joint[present] / image_count[present, None]
    score = np.sum(conditional, axis=0)
    return np.argsort(-score, kind="stable")


def _randbelow(rng, n):
    # CPython's rejection sampling on getrandbits; spelled out so the draws do not depend on
    # the interpreter's private random helpers
    bits = n.bit_length()
    r = rng.getrandbits(bits)
    while r >= n:
        r = rng.getrandbits(bits)
    return r


def _draw(rng, population, k):
    """``random.sample(population, k)`` of CPython 3.x: the same draws in the same order."""
    n = len(population)
    small_table = 21 + (4 ** math.ceil(math.log(k * 3, 4)) if k > 5 else 0)
    if n <= small_table:
        pool = list(population)
        picked = []
        for i in range(k):
            j = _randbelow(rng, n - i)
            picked.append(pool[j])
            pool[j] = pool[n - i - 1]
        return picked
    taken, picked = set(), []
    for _ in range(k):
        j = _randbelow(rng, n)
        while j in taken:
            j = _randbelow(rng, n)
        taken.add(j)
        picked.append(population[j])
    return picked


def sample_longtail_subset(labels, targets, order, seed=0):
    """Greedy long-tailed subset: sorted pool row indices.

    ``targets[k]`` is the image count wanted for class ``order[k]``. A class that has fewer
    images than wanted gets all of them (the original VOC script would stop with an error).
    """
    labels = _binary(labels)
    num_classes = labels.shape[1]
    if len(targets) != len(order) or sorted(int(c) for c in order) != list(range(num_classes)):
        raise ValueError("order must be a permutation of the classes and match targets in length.")
    rng = random.Random(seed)
    members = [np.nonzero(labels[:, c])[0].tolist() for c in range(num_classes)]
    image_classes = {}
    # Python sets on purpose: their iteration order, which the draws index into, depends on
    # the exact history of adds and removes, as in the original
    chosen_with = [set() for _ in range(num_classes)]
    selected = set()
    count = np.zeros(num_classes, dtype=np.int64)
    for target, cls in zip(targets, order):
        cls = int(cls)
        change = int(target) - int(count[cls])
        if change < 0:
            for t in _draw(rng, tuple(chosen_with[cls]), -change):
                selected.remove(t)
                count -= labels[t]
                for c in image_classes[t]:
                    chosen_with[c].remove(t)
        elif change > 0:
            candidates = tuple(set(members[cls]) - chosen_with[cls])
            if change > len(candidates):
                logger.info("Class %d: %d more images wanted, only %d left.", cls, change,
                            len(candidates))
                change = len(candidates)
            for t in _draw(rng, candidates, change):
                selected.add(t)
                count += labels[t]
                image_classes.setdefault(t, np.nonzero(labels[t])[0].tolist())
                for c in image_classes[t]:
                    chosen_with[c].add(t)
    return np.array(sorted(selected), dtype=np.int64)


def class_statistics(labels, class_names, head=SPLIT_HEAD_MIN_IMAGES, tail=SPLIT_TAIL_BELOW_IMAGES):
    """JSON-ready per-class image counts and the head / medium / tail split of a label set."""
    labels = _binary(labels)
    if labels.shape[1] != len(class_names):
        raise ValueError(f"{labels.shape[1]} label columns but {len(class_names)} class names.")
    class_freq = labels.sum(axis=0)
    split = head_medium_tail(class_freq, head, tail)
    return dict(class_names=list(class_names), class_freq=class_freq.tolist(),
                neg_class_freq=(len(labels) - class_freq).tolist(), num_images=len(labels),
                split={k: v.tolist() for k, v in split.items()},
                thresholds=dict(head=head, tail=tail))


def create_longtail_dataset(ann_path, out_dir, dataset, max_count=None, min_count=1, shape=6,
                            seed=0, overwrite=False):
    """Draw the long-tailed subset of ``ann_path``; writes img_id.json and class_stats.json."""
    if dataset not in DEFAULT_MAX_COUNT:
        raise ValueError(f"dataset must be one of {sorted(DEFAULT_MAX_COUNT)}, got {dataset!r}.")
    outputs = [os.path.join(out_dir, name) for name in OUTPUT_FILES]
    for out in outputs:
        check_output_path(out, overwrite=overwrite, inputs=(ann_path,))
    max_count = DEFAULT_MAX_COUNT[dataset] if max_count is None else max_count
    image_ids, class_names, labels = read_multilabel_annotations(ann_path)
    targets = pareto_targets(len(class_names), max_count, min_count, shape)
    order = cooccurrence_order(labels)
    selected = sample_longtail_subset(labels, targets, order, seed)
    stats = class_statistics(labels[selected], class_names)
    empty = [class_names[c] for c, n in enumerate(stats["class_freq"]) if n == 0]
    if empty:
        logger.warning("%d class(es) have no image in the long-tailed subset: %s", len(empty),
                       ", ".join(empty))
    stats.update(dataset=dataset, source=os.path.abspath(ann_path), num_source_images=len(labels),
                 seed=seed, shape=shape, max_count=max_count, min_count=min_count,
                 class_order=order.tolist(), targets=targets)
    os.makedirs(out_dir, exist_ok=True)
    write_json_atomic([image_ids[i] for i in selected], outputs[0])
    write_json_atomic(stats, outputs[1])
    return stats
