# Copyright (c) lt_d2 contributors.
"""Open Images Challenge 2019 detection data, offline: CSVs -> an LVIS/COCO-style json.

:func:`convert_openimages` reads the challenge CSVs (class descriptions, boxes, verified
image-level labels, the label hierarchy, image sizes) and returns a json dict that
:func:`lt_d2.data.datasets.load_lt_json` loads (it reads it as LVIS format because of the
``frequency`` and ``neg_category_ids`` fields, so group-of boxes, stored as ``iscrowd``, are
trained on as ordinary boxes, as the EQL/EQLv2 OpenImages experiments did).

Beyond COCO, the json holds:

* images: ``pos_category_ids`` / ``neg_category_ids``: verified present / absent classes,
  expanded with the hierarchy as the official challenge tools do (present -> ancestors too,
  absent -> descendants too);
* annotations: ``isgroupof`` (= ``iscrowd``);
* categories: ``label`` (freebase id), ``ancestor_ids`` (category ids of all ancestors),
  ``image_count`` / ``instance_count`` (from the split's own, unexpanded boxes, or copied from
  the training json with ``stats_from``), ``frequency`` (LVIS's r/c/f rule on image counts) and
  ``frequency_quintile`` 1..5: the EQLv2 OpenImages AP1..AP5 groups (classes sorted by training
  instance count and cut into 5 equal groups, 1 = rarest; eqlv2 ``get_group_ids``);
* info: ``boxes_hierarchy_expanded`` tells the evaluator whether boxes already carry parents.
"""
import json
import logging
import os

import numpy as np

from ..file_io import check_output_path, write_json_atomic
from ..grouping import count_quantiles, lvis_frequency
from .openimages_csv import (
    OpenImagesFormatError,
    image_size_from_file,
    read_boxes,
    read_class_descriptions,
    read_hierarchy,
    read_image_labels,
    read_image_sizes,
)

logger = logging.getLogger(__name__)

__all__ = ["convert_openimages", "write_dataset_json"]


def _descendants(ancestors):
    below = {label: set() for label in ancestors}
    for label, above in ancestors.items():
        for a in above:
            below[a].add(label)
    return below


def _stats_from_json(path, labels):
    """Training statistics of ``labels`` copied from an already converted training json."""
    with open(path, encoding="utf-8") as f:
        by_label = {c.get("label"): c for c in json.load(f)["categories"]}
    missing = [label for label in labels if label not in by_label]
    if missing:
        raise OpenImagesFormatError(
            f"{path}: no category with label {missing[0]} ({len(missing)} missing); stats_from "
            "must be a json converted from the same class list.")
    keys = ("image_count", "instance_count", "frequency", "frequency_quintile")
    lacking = [k for k in keys if k not in by_label[labels[0]]]
    if lacking:
        raise OpenImagesFormatError(f"{path}: categories lack {lacking}; stats_from must be a "
                                    "training json written by this converter.")
    return [{k: by_label[label][k] for k in keys} for label in labels]


def _image_sizes(image_ids, image_sizes_csv, image_root):
    """{ImageID: (width, height)} from the size CSV, else from the image files."""
    sizes = read_image_sizes(image_sizes_csv) if image_sizes_csv else {}
    missing = [i for i in image_ids if i not in sizes]
    if missing and image_root is None:
        raise OpenImagesFormatError(
            f"{image_sizes_csv}: no size for {len(missing)} image(s) (first: {missing[0]}); add "
            "them to the CSV or pass the image folder to read their sizes from.")
    for image_id in missing:
        sizes[image_id] = image_size_from_file(image_root, image_id)
    return sizes


def _images(image_ids, sizes, verified, ancestors, cat_id):
    """Image entries, with the verified labels expanded over the hierarchy."""
    descendants = _descendants(ancestors)
    images = []
    for i, image_id in enumerate(image_ids, 1):
        pos, neg = verified.get(image_id, (set(), set()))
        pos = pos | {a for label in pos for a in ancestors[label]}
        neg = (neg | {d for label in neg for d in descendants[label]}) - pos
        width, height = sizes[image_id]
        images.append({"id": i, "file_name": f"{image_id}.jpg", "width": width, "height": height,
                       "pos_category_ids": sorted(cat_id[x] for x in pos),
                       "neg_category_ids": sorted(cat_id[x] for x in neg)})
    return images


def _annotations(boxes, sizes, json_id, cat_id, ancestors, expand_hierarchy):
    """Annotations in pixels, and the split's own instance count and image set per label."""
    annotations, instance_count, image_sets = [], np.zeros(len(cat_id), np.int64), {}
    for image_id, label, x0, x1, y0, y1, group_of in boxes:
        width, height = sizes[image_id]
        bbox = [round(x0 * width, 2), round(y0 * height, 2),
                round((x1 - x0) * width, 2), round((y1 - y0) * height, 2)]
        instance_count[cat_id[label] - 1] += 1
        image_sets.setdefault(label, set()).add(image_id)
        for target in [label] + (sorted(ancestors[label]) if expand_hierarchy else []):
            annotations.append({"id": len(annotations) + 1, "image_id": json_id[image_id],
                                "category_id": cat_id[target], "bbox": bbox,
                                "area": round(bbox[2] * bbox[3], 2), "iscrowd": int(group_of),
                                "isgroupof": int(group_of)})
    return annotations, instance_count, image_sets


def _category_stats(labels, instance_count, image_sets):
    image_count = np.array([len(image_sets.get(label, ())) for label in labels])
    quintile = count_quantiles(instance_count)
    frequency = lvis_frequency(image_count)
    return [{"image_count": int(image_count[k]), "instance_count": int(instance_count[k]),
             "frequency": str(frequency[k]), "frequency_quintile": int(quintile[k])}
            for k in range(len(labels))]


def convert_openimages(classes_csv, boxes_csv, *, image_labels_csv=None, hierarchy_json=None,
                       image_sizes_csv=None, image_root=None, expand_hierarchy=False,
                       stats_from=None):
    """Convert one Open Images split to a json dict (see the module docstring).

    ``image_sizes_csv`` (ImageID,Width,Height) gives image sizes; sizes it lacks are read from
    ``image_root``/<ImageID>.jpg. ``expand_hierarchy`` adds a copy of each box for every
    ancestor class (the official evaluation's ground-truth expansion). ``stats_from``: the
    converted training json whose statistics the categories get (for validation splits).
    """
    if image_sizes_csv is None and image_root is None:
        raise ValueError("Image sizes are needed: pass an image-size CSV (ImageID,Width,Height) "
                         "or the folder of the images.")
    if expand_hierarchy and hierarchy_json is None:
        raise ValueError("Expanding boxes to parent classes needs the hierarchy json.")
    classes = read_class_descriptions(classes_csv)
    labels = [label for label, _ in classes]
    cat_id = {label: i for i, label in enumerate(labels, 1)}
    ancestors = (read_hierarchy(hierarchy_json, labels) if hierarchy_json
                 else {label: set() for label in labels})
    boxes = read_boxes(boxes_csv, labels)
    verified = read_image_labels(image_labels_csv, labels) if image_labels_csv else {}

    image_ids = sorted({b[0] for b in boxes} | set(verified))
    sizes = _image_sizes(image_ids, image_sizes_csv, image_root)
    images = _images(image_ids, sizes, verified, ancestors, cat_id)
    json_id = {image_id: i for i, image_id in enumerate(image_ids, 1)}
    annotations, instance_count, image_sets = _annotations(boxes, sizes, json_id, cat_id,
                                                           ancestors, expand_hierarchy)
    stats = (_stats_from_json(stats_from, labels) if stats_from is not None
             else _category_stats(labels, instance_count, image_sets))
    categories = [{"id": cat_id[label], "name": name, "label": label,
                   "ancestor_ids": sorted(cat_id[a] for a in ancestors[label]), **stats[k]}
                  for k, (label, name) in enumerate(classes)]
    info = {"description": "Open Images Challenge 2019 detection, converted by lt_d2",
            "boxes_csv": os.path.basename(boxes_csv),
            "boxes_hierarchy_expanded": bool(expand_hierarchy),
            "stats_source": os.path.basename(stats_from) if stats_from else "this split",
            "frequency_quintile": "classes sorted by training instance count into 5 equal "
                                  "groups, 1 = rarest (EQLv2 AP1..AP5)"}
    logger.info("Open Images: %d images, %d boxes (%d written), %d classes.", len(images),
                len(boxes), len(annotations), len(categories))
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def write_dataset_json(data, path, *, overwrite=False, inputs=()):
    """Write the converted json atomically (see :func:`check_output_path` for when it refuses)."""
    check_output_path(path, overwrite=overwrite, inputs=inputs)
    write_json_atomic(data, path, separators=(",", ":"))
