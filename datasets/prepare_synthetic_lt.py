#!/usr/bin/env python
# Copyright (c) lt_d2 contributors.
"""Generate lt_d2's synthetic long-tailed LVIS-format dataset (see lt_d2/data/synthetic.py).

    python datasets/prepare_synthetic_lt.py [--out $DETECTRON2_DATASETS/lt_synthetic] [--seed 0]

The dataset names lt_synthetic_train / lt_synthetic_val read it from
$DETECTRON2_DATASETS/lt_synthetic. An existing complete dataset is kept (--force rebuilds it).
"""
import argparse
import os
import shutil
import sys

from lt_d2.data.synthetic import COMPLETE_MARKER, generate_synthetic_lt


def main(argv=None):
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--out", default=os.path.join(root, "lt_synthetic"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="delete and rebuild an existing one")
    args = parser.parse_args(argv)
    if os.path.exists(args.out):
        if not args.force and os.path.exists(os.path.join(args.out, COMPLETE_MARKER)):
            print(f"{args.out} is already complete; keeping it (--force to rebuild).")
            return 0
        if not args.force:
            sys.exit(f"error: {args.out} exists but is not a complete dataset; remove it or use --force.")
        shutil.rmtree(args.out)
    generate_synthetic_lt(args.out, seed=args.seed)
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
