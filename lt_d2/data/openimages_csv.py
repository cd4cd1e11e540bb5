# Copyright (c) lt_d2 contributors.
"""Readers of the Open Images Challenge 2019 detection files: class descriptions, the label
hierarchy, box / image-level label / image-size CSVs. Used offline by
:mod:`lt_d2.data.openimages_convert`; every error names the file and line.
"""
import csv
import json
import logging
import os

from PIL import Image

logger = logging.getLogger(__name__)

__all__ = ["OpenImagesFormatError", "image_size_from_file", "read_boxes",
           "read_class_descriptions", "read_hierarchy", "read_image_labels", "read_image_sizes"]

BOX_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax", "IsGroupOf")
LABEL_COLUMNS = ("ImageID", "LabelName", "Confidence")
SIZE_COLUMNS = ("ImageID", "Width", "Height")


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
    path = os.path.join(image_root, f"{image_id}.jpg")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Image {path} does not exist; its size is needed (or pass an "
                                "image-size CSV with ImageID,Width,Height).")
    with Image.open(path) as img:
        width, height = img.size
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
            width, height = height, width
    return width, height
