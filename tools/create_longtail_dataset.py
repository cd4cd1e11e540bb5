#!/usr/bin/env python
# Copyright (c) lt_d2 contributors.
"""Draw a long-tailed multi-label subset (COCO-MLT / VOC-MLT) from a full training set.

    python tools/create_longtail_dataset.py --dataset coco \
        --ann coco/annotations/instances_train2017.json --out coco/longtail2017 \
        [--max-count N] [--min-count 1] [--shape 6] [--seed 0] [--overwrite]
    python tools/create_longtail_dataset.py --dataset voc --ann VOC2012 \
        --out VOC2012/longtail2012

--ann is a COCO instances json, a VOC folder (its ImageSets/Main/trainval.txt) or a VOC split file.
Writes img_id.json (selected image ids) and class_stats.json (per-class image counts,
head/medium/tail split, targets, class order, seed) into --out. The defaults (max 1200 COCO,
800 VOC, seed 0) are the Distribution-Balanced loss paper's; on VOC 2012 trainval they give its
published VOC-MLT list. Existing outputs are kept unless --overwrite is given.
"""
import argparse
import logging
import os
import sys

from lt_d2.data import longtail_subset as lts
from lt_d2.data.multilabel_annotations import LongTailFormatError


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--dataset", required=True, choices=["coco", "voc"])
    parser.add_argument("--ann", required=True, help="COCO json, VOC folder or VOC split file")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--max-count", type=int, help="images for the first class "
                        "(default: 1200 coco, 800 voc)")
    parser.add_argument("--min-count", type=int, default=1)
    parser.add_argument("--shape", type=float, default=6, help="Pareto shape b")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    shape = int(args.shape) if args.shape == int(args.shape) else args.shape  # "shape": 6 in json
    try:
        stats = lts.create_longtail_dataset(args.ann, args.out, args.dataset, args.max_count,
                                            args.min_count, shape, args.seed, args.overwrite)
    except (LongTailFormatError, FileNotFoundError, FileExistsError, ValueError) as e:
        sys.exit(f"create_longtail_dataset.py: error: {e}")
    split = stats["split"]
    print(f"selected {stats['num_images']} of {stats['num_source_images']} images, "
          f"{len(stats['class_names'])} classes")
    print(f"head/medium/tail classes: {len(split['head'])}/{len(split['medium'])}/"
          f"{len(split['tail'])}")
    print(f"wrote {os.path.join(args.out, 'img_id.json')}, "
          f"{os.path.join(args.out, 'class_stats.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
