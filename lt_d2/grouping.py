# Copyright (c) lt_d2 contributors.
"""Every rule that sorts classes by how often they occur in training, in one place.

Data (class statistics, dataset conversion), losses (BAGS), evaluation (LVIS APr/APc/APf, the
long-tail report, OpenImages AP1..AP5, multi-label head/medium/tail) and the benchmarks all use
these functions, so a boundary can only differ between them by an explicit argument.

Names: a *frequency* is LVIS's r / c / f label; a *split* is the multi-label head / medium / tail
partition; a *quantile* is one of the equal-size groups of classes sorted by count (OpenImages'
quintiles); a *bin* is a BAGS group of classes with its own softmax. Plain numpy, no detectron2:
every layer of lt_d2 may import it.
"""
import bisect

import numpy as np

# LVIS (Gupta et al. 2019), on the number of training images that contain the class.
LVIS_FREQUENCIES = ("r", "c", "f")
LVIS_FREQUENCY_NAMES = {"r": "rare", "c": "common", "f": "frequent"}
LVIS_RARE_MAX_IMAGES = 10  # rare: 1..10 images
LVIS_COMMON_MAX_IMAGES = 100  # common: 11..100, frequent: > 100

# Distribution-Balanced loss (Wu et al. 2020), on training images per class of a multi-label set.
SPLITS = ("head", "medium", "tail")
SPLIT_HEAD_MIN_IMAGES = 100  # head: >= 100 images
SPLIT_TAIL_BELOW_IMAGES = 20  # tail: < 20 images; medium: in between

# EQLv2's OpenImages AP1..AP5 (Tan et al. 2021): classes sorted by training instance count.
OPENIMAGES_NUM_QUANTILES = 5

# BAGS (Li et al. 2020): bins on training instance counts; bin 0 is background.
BAGS_BIN_SPLIT = (10, 100, 1000)


def lvis_frequency(image_count):
    """LVIS's label of each class from its training image count: "r" (<= 10), "c" (11-100) or
    "f" (> 100). A scalar count gives a 0-d array (``str()`` of it is the label)."""
    image_count = np.asarray(image_count)
    return np.where(image_count <= LVIS_RARE_MAX_IMAGES, "r",
                    np.where(image_count <= LVIS_COMMON_MAX_IMAGES, "c", "f"))


def lvis_frequency_boundaries():
    """Image counts halfway between the LVIS groups, where a plot over integer counts draws
    its dividing lines."""
    return (LVIS_RARE_MAX_IMAGES + 0.5, LVIS_COMMON_MAX_IMAGES + 0.5)


def check_lvis_frequency(name):
    if name not in LVIS_FREQUENCIES:
        raise ValueError(f"Unknown LVIS frequency {name!r}; use one of {LVIS_FREQUENCIES}.")
    return name


def head_medium_tail(image_count, head=SPLIT_HEAD_MIN_IMAGES, tail=SPLIT_TAIL_BELOW_IMAGES):
    """Class indices of each split: ``{"head": (>= head), "medium": [tail, head), "tail":
    (< tail)}``, in the order of :data:`SPLITS`."""
    image_count = np.asarray(image_count)
    return dict(head=np.nonzero(image_count >= head)[0],
                medium=np.nonzero((image_count >= tail) & (image_count < head))[0],
                tail=np.nonzero(image_count < tail)[0])


def count_quantiles(counts, num_quantiles=OPENIMAGES_NUM_QUANTILES):
    """Quantile 1..``num_quantiles`` of each class: classes sorted by ``counts`` (ties by index)
    and cut into groups of equal size (the first ones one larger when K is not a multiple);
    1 = rarest."""
    order = np.argsort(np.asarray(counts), kind="stable")
    quantile = np.empty(len(order), np.int64)
    for q, members in enumerate(np.array_split(order, num_quantiles), 1):
        quantile[members] = q
    return quantile


def bags_bins(instance_count, bin_split=BAGS_BIN_SPLIT):
    """BAGS bin of each class, ``bisect_right(bin_split, count)``: with (10, 100, 1000), bin 0
    holds 0-9 training instances, 1 10-99, 2 100-999, 3 the rest. A list of K ints."""
    return [bisect.bisect_right(bin_split, int(n)) for n in instance_count]
