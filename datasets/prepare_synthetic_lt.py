#!/usr/bin/env python
# Copyright (c) lt_d2 contributors.
"""Generate lt_d2's synthetic long-tailed datasets.

    python datasets/prepare_synthetic_lt.py [--kind detection|multilabel] [--out DIR] [--seed 0]

detection (default): the LVIS-format detection set (lt_d2/data/synthetic.py), read by
lt_synthetic_train / lt_synthetic_val from $DETECTRON2_DATASETS/lt_synthetic.
multilabel: the VOC-MLT-like multi-label set (lt_d2/data/synthetic_multilabel.py), read by
ml_synthetic_train / ml_synthetic_test from $DETECTRON2_DATASETS/ml_synthetic.
An existing complete dataset is kept (--force rebuilds it).
"""
import argparse
import functools
import os
import sys

from lt_d2.data.synthetic import generate_synthetic_lt, prepare_generated_dataset
from lt_d2.data.synthetic_multilabel import generate_synthetic_multilabel

KINDS = {
    "detection": ("lt_synthetic", generate_synthetic_lt),
    "multilabel": ("ml_synthetic", generate_synthetic_multilabel),
}


def main(argv=None):
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--kind", choices=sorted(KINDS), default="detection")
    parser.add_argument("--out", help="default: $DETECTRON2_DATASETS/{lt,ml}_synthetic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="delete and rebuild an existing one")
    args = parser.parse_args(argv)
    folder, generate = KINDS[args.kind]
    out = args.out or os.path.join(root, folder)
    try:
        made = prepare_generated_dataset(out, functools.partial(generate, seed=args.seed),
                                         args.force)
    except FileExistsError as e:
        sys.exit(f"error: {e}")
    print(f"Wrote {out}" if made
          else f"{out} is already complete; keeping it (--force to rebuild).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
