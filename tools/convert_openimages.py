#!/usr/bin/env python
# Copyright (c) lt_d2 contributors.
"""Convert Open Images Challenge 2019 detection CSVs to an LVIS/COCO-style json for lt_d2.

    python tools/convert_openimages.py \\
        --classes challenge-2019-classes-description-500.csv \\
        --boxes challenge-2019-train-detection-bbox.csv \\
        --image-labels challenge-2019-train-detection-human-imagelabels.csv \\
        --hierarchy challenge-2019-label500-hierarchy.json \\
        --image-sizes train_sizes.csv  (or/and --image-root train/) \\
        --out openimages/annotations/challenge2019_train.json
    # validation: same with the validation CSVs, plus the training json's statistics
    #   --stats-from openimages/annotations/challenge2019_train.json [--expand-hierarchy]

Image sizes come from --image-sizes (ImageID,Width,Height); the ones it lacks are read from
--image-root/<ImageID>.jpg. --expand-hierarchy adds a copy of every box for each parent class,
as the official challenge evaluation does to the ground truth. The output is written atomically
and an existing file is kept unless --overwrite is given. See lt_d2/data/openimages_convert.py.
"""
import argparse
import logging
import sys

from lt_d2.data.openimages_convert import convert_openimages, write_dataset_json
from lt_d2.data.openimages_csv import OpenImagesFormatError
from lt_d2.file_io import check_output_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--classes", required=True, help="class-description CSV (no header)")
    parser.add_argument("--boxes", required=True, help="detection bbox CSV")
    parser.add_argument("--image-labels", help="human-verified image-level label CSV")
    parser.add_argument("--hierarchy", help="label hierarchy json")
    parser.add_argument("--image-sizes", help="CSV with ImageID,Width,Height")
    parser.add_argument("--image-root", help="folder of <ImageID>.jpg, to read missing sizes")
    parser.add_argument("--stats-from", help="converted training json whose class statistics "
                        "and frequency groups to copy (for validation splits)")
    parser.add_argument("--expand-hierarchy", action="store_true",
                        help="add each box again for every ancestor class")
    parser.add_argument("--out", required=True, help="output json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    inputs = (args.classes, args.boxes, args.image_labels, args.hierarchy, args.image_sizes,
              args.stats_from)
    try:
        # before the (long) conversion, so a refused output costs nothing
        check_output_path(args.out, overwrite=args.overwrite, inputs=inputs)
        data = convert_openimages(
            args.classes, args.boxes, image_labels_csv=args.image_labels,
            hierarchy_json=args.hierarchy, image_sizes_csv=args.image_sizes,
            image_root=args.image_root, expand_hierarchy=args.expand_hierarchy,
            stats_from=args.stats_from)
        write_dataset_json(data, args.out, overwrite=args.overwrite, inputs=inputs)
    except (OpenImagesFormatError, FileNotFoundError, FileExistsError, ValueError) as e:
        sys.exit(f"convert_openimages.py: error: {e}")
    print(f"wrote {args.out}: {len(data['images'])} images, {len(data['annotations'])} boxes, "
          f"{len(data['categories'])} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
