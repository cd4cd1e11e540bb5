#!/usr/bin/env python
# Copyright (c) lt_d2 contributors.
"""Time building the training samplers over an LVIS-sized dataset dict list.

    python tools/benchmark_samplers.py [--images 100000 --classes 1203 --anns-per-image 12]

Class frequencies follow a long tail (Zipf); prints seconds to build each registered sampler
and to draw 10,000 indices from it.
"""
import argparse
import itertools
import sys
import time

import numpy as np

import lt_d2  # noqa: F401  compatibility fixes and registration, before detectron2

# isort: split
from detectron2.config import get_cfg

from lt_d2.config import add_lt_config
from lt_d2.data import SAMPLER_REGISTRY, build_training_sampler


def lvis_like_dicts(num_images, num_classes, anns_per_image, seed=0):
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, num_classes + 1) ** 1.1
    weights /= weights.sum()
    counts = rng.poisson(anns_per_image, num_images).clip(1)
    cats = rng.choice(num_classes, size=int(counts.sum()), p=weights)
    dicts, start = [], 0
    for n in counts:
        dicts.append({"annotations": [{"category_id": int(c)} for c in cats[start:start + n]]})
        start += n
    return dicts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100000)
    parser.add_argument("--classes", type=int, default=1203)
    parser.add_argument("--anns-per-image", type=int, default=12)
    args = parser.parse_args(argv)
    dicts = lvis_like_dicts(args.images, args.classes, args.anns_per_image)
    print(f"{len(dicts)} images, {sum(len(d['annotations']) for d in dicts)} annotations, "
          f"{args.classes} classes")
    cfg = add_lt_config(get_cfg())
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = args.classes
    cfg.DATALOADER.REPEAT_THRESHOLD = 0.001
    cfg.SEED = 0
    for name in sorted(k for k, _ in SAMPLER_REGISTRY):
        cfg.DATALOADER.SAMPLER_TRAIN = name
        start = time.perf_counter()
        sampler = build_training_sampler(cfg, dicts)
        built = time.perf_counter() - start
        start = time.perf_counter()
        list(itertools.islice(iter(sampler), 10000))
        print(f"{name:28s} build {built:6.2f} s   10k indices {time.perf_counter() - start:6.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
