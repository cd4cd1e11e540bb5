# Copyright (c) lt_d2 contributors.
"""Open Images Challenge 2019 detection data: CSVs -> an LVIS/COCO-style json, and registration.

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
import csv
import json
import logging
import os

import numpy as np

from ..file_io import check_output_path, write_json_atomic
from ..grouping import count_quantiles, lvis_frequency
from .datasets import register_lt_dataset

logger = logging.getLogger(__name__)

BOX_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax", "IsGroupOf")
LABEL_COLUMNS = ("ImageID", "LabelName", "Confidence")
SIZE_COLUMNS = ("ImageID", "Width", "Height")
OPENIMAGES_HINT = (
    "Convert the Open Images Challenge 2019 CSVs with `python tools/convert_openimages.py`; "
    "image_root holds <ImageID>.jpg."
)


class OpenImagesFormatError(ValueError):
    """Open Images CSV/json input that cannot be converted."""


def read_class_descriptions(path):
    """``[(LabelName, DisplayName), ...]`` in file order (the file has no header)."""
    classes, seen = [], set()
    with open(path, newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            if len(row) < 2:
                raise OpenImagesFormatError(
                    f"{path}:{line_no}: expected 'LabelName,DisplayName', got {row!r}.")
            if row[0] in seen:
                raise OpenImagesFormatError(f"{path}:{line_no}: label {row[0]} appears twice.")
            seen.add(row[0])
            classes.append((row[0], row[1]))
    if not classes:
        raise OpenImagesFormatError(f"{path}: no classes.")
    return classes


def read_hierarchy(path, labels):
    """{label: set of ancestor labels} over ``labels``; a label may sit under several parents
    (the hierarchy json repeats it), so its ancestors are the union over its places."""
    with open(path, encoding="utf-8") as f:
        root = json.load(f)
    known = set(labels)
    ancestors = {label: set() for label in labels}
    stack = [(root, ())]
    while stack:
        node, above = stack.pop()
        if "LabelName" not in node:
            raise OpenImagesFormatError(f"{path}: a hierarchy node lacks 'LabelName': {node!r}.")
        name = node["LabelName"]
        if name in known:
            ancestors[name].update(a for a in above if a in known)
        for child in node.get("Subcategory", []):
            stack.append((child, above + (name,)))
    return ancestors


def _csv_rows(path, required):
    """Yield (line number, row, column index) of a CSV with a header holding ``required``."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise OpenImagesFormatError(f"{path}: the file is empty; expected a header line.")
        column = {name.strip(): i for i, name in enumerate(header)}
        missing = [c for c in required if c not in column]
        if missing:
            raise OpenImagesFormatError(
                f"{path}:1: missing column(s) {missing}; the header is {header}. Pass the Open "
                f"Images CSV that has {list(required)} (the header line must be kept).")
        width = max(column[c] for c in required) + 1
        for row in reader:
            if not row:
                continue
            if len(row) < width:
                raise OpenImagesFormatError(
                    f"{path}:{reader.line_num}: {len(row)} fields, the header has {len(header)}.")
            yield reader.line_num, row, column


def read_boxes(path, labels):
    """Box rows as ``(ImageID, LabelName, xmin, xmax, ymin, ymax, is_group_of)``, normalised."""
    # one shared string per image / label: the full training CSV has ~12M rows
    known, boxes, image_ids = {label: label for label in labels}, [], {}
    for line_no, row, col in _csv_rows(path, BOX_COLUMNS):
        label = known.get(row[col["LabelName"]])
        if label is None:
            label = row[col["LabelName"]]
            raise OpenImagesFormatError(
                f"{path}:{line_no}: label {label} is not in the class descriptions; pass the "
                "class-description CSV of the same challenge release as the boxes.")
        try:
            x0, x1, y0, y1 = (float(row[col[c]]) for c in ("XMin", "XMax", "YMin", "YMax"))
            group_of = int(float(row[col["IsGroupOf"]])) == 1
        except ValueError as e:
            raise OpenImagesFormatError(f"{path}:{line_no}: {e}.") from e
        if not (0.0 <= x0 <= x1 <= 1.0 and 0.0 <= y0 <= y1 <= 1.0):
            raise OpenImagesFormatError(
                f"{path}:{line_no}: box XMin={x0}, XMax={x1}, YMin={y0}, YMax={y1} is not a "
                "normalised box (need 0 <= min <= max <= 1); fix or drop this row.")
        image_id = image_ids.setdefault(row[col["ImageID"]], row[col["ImageID"]])
        boxes.append((image_id, label, x0, x1, y0, y1, group_of))
    return boxes


def read_image_labels(path, labels):
    """{ImageID: (verified present labels, verified absent labels)}; Confidence 0 = absent.
    Labels outside ``labels`` (image-level files can be wider than the 500 box classes) are
    skipped."""
    known, verified, skipped = set(labels), {}, 0
    for line_no, row, col in _csv_rows(path, LABEL_COLUMNS):
        label = row[col["LabelName"]]
        if label not in known:
            skipped += 1
            continue
        try:
            present = float(row[col["Confidence"]]) > 0
        except ValueError as e:
            raise OpenImagesFormatError(f"{path}:{line_no}: Confidence: {e}.") from e
        verified.setdefault(row[col["ImageID"]], (set(), set()))[0 if present else 1].add(label)
    if skipped:
        logger.warning("%s: skipped %d image-level labels of classes outside the class list.",
                       path, skipped)
    return verified


def read_image_sizes(path):
    sizes = {}
    for line_no, row, col in _csv_rows(path, SIZE_COLUMNS):
        try:
            sizes[row[col["ImageID"]]] = (int(row[col["Width"]]), int(row[col["Height"]]))
        except ValueError as e:
            raise OpenImagesFormatError(f"{path}:{line_no}: {e}.") from e
    return sizes


def image_size_from_file(image_root, image_id):
    """(width, height) as detectron2 sees the image: after its EXIF rotation."""
    from PIL import Image

    path = os.path.join(image_root, f"{image_id}.jpg")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Image {path} does not exist; its size is needed (or pass an "
                                "image-size CSV with ImageID,Width,Height).")
    with Image.open(path) as img:
        width, height = img.size
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
            width, height = height, width
    return width, height


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
    descendants = _descendants(ancestors)
    boxes = read_boxes(boxes_csv, labels)
    verified = read_image_labels(image_labels_csv, labels) if image_labels_csv else {}

    image_ids = sorted({b[0] for b in boxes} | set(verified))
    sizes = read_image_sizes(image_sizes_csv) if image_sizes_csv else {}
    missing = [i for i in image_ids if i not in sizes]
    if missing and image_root is None:
        raise OpenImagesFormatError(
            f"{image_sizes_csv}: no size for {len(missing)} image(s) (first: {missing[0]}); add "
            "them to the CSV or pass the image folder to read their sizes from.")
    for image_id in missing:
        sizes[image_id] = image_size_from_file(image_root, image_id)

    images, json_id = [], {}
    for i, image_id in enumerate(image_ids, 1):
        json_id[image_id] = i
        pos, neg = verified.get(image_id, (set(), set()))
        pos = pos | {a for label in pos for a in ancestors[label]}
        neg = (neg | {d for label in neg for d in descendants[label]}) - pos
        width, height = sizes[image_id]
        images.append({"id": i, "file_name": f"{image_id}.jpg", "width": width, "height": height,
                       "pos_category_ids": sorted(cat_id[x] for x in pos),
                       "neg_category_ids": sorted(cat_id[x] for x in neg)})

    annotations, instance_count, image_sets = [], np.zeros(len(labels), np.int64), {}
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

    if stats_from is not None:
        stats = _stats_from_json(stats_from, labels)
    else:
        image_count = np.array([len(image_sets.get(label, ())) for label in labels])
        quintile = count_quantiles(instance_count)
        frequency = lvis_frequency(image_count)
        stats = [{"image_count": int(image_count[k]), "instance_count": int(instance_count[k]),
                  "frequency": str(frequency[k]), "frequency_quintile": int(quintile[k])}
                 for k in range(len(labels))]
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


def register_openimages(name, json_file, image_root):
    """Register a converted Open Images json under ``name`` with the "openimages" evaluator."""
    register_lt_dataset(name, json_file, image_root, evaluator_type="openimages",
                        layout_hint=OPENIMAGES_HINT)
