# Copyright (c) lt_d2 contributors.
"""Readers of multi-label annotations: which classes each image holds, from a COCO instances json
or a VOC tree. Both the run-time loader (:mod:`lt_d2.data.multilabel_datasets`) and the offline
subset drawing (:mod:`lt_d2.data.longtail_subset`) read annotations through
:func:`read_multilabel_annotations`.
"""
import json
import os
import xml.etree.ElementTree as ET

import numpy as np

__all__ = ["VOC_CLASSES", "LongTailFormatError", "MultiLabelAnnotations",
           "read_multilabel_annotations"]

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")


class LongTailFormatError(ValueError):
    """An annotation file or folder that is neither COCO json nor a VOC tree."""


class MultiLabelAnnotations(tuple):
    """Unpacks as ``(image_ids, class_names, labels)``; per-image ``file_names`` (relative to
    the image folder), ``heights``, ``widths`` (None where the annotation has no size) and the
    ``source`` path are attributes."""

    def __new__(cls, image_ids, class_names, labels, file_names, heights, widths, source):
        self = super().__new__(cls, (image_ids, class_names, labels))
        self.file_names, self.heights, self.widths, self.source = (file_names, heights, widths,
                                                                   source)
        return self

    image_ids = property(lambda self: self[0])
    class_names = property(lambda self: self[1])
    labels = property(lambda self: self[2])


def _read_coco(path, data):
    categories = sorted(data["categories"], key=lambda c: c["id"])
    column = {c["id"]: k for k, c in enumerate(categories)}
    image_ids = [im["id"] for im in data["images"]]
    row = {image_id: k for k, image_id in enumerate(image_ids)}
    labels = np.zeros((len(image_ids), len(categories)), dtype=np.uint8)
    for ann in data["annotations"]:
        # as the original COCO loader: crowd regions are labels, "ignore" and degenerate boxes
        # are not
        bbox = ann.get("bbox", (0, 0, 1, 1))
        if ann.get("ignore", False) or ann.get("area", 1) <= 0 or bbox[2] < 1 or bbox[3] < 1:
            continue
        try:
            labels[row[ann["image_id"]], column[ann["category_id"]]] = 1
        except KeyError as e:
            raise LongTailFormatError(
                f"{path}: annotation {ann.get('id')} refers to unknown image or category id {e}; "
                "the json's 'images' and 'categories' must list every id the annotations use."
            ) from None
    images = data["images"]
    return MultiLabelAnnotations(image_ids, [c["name"] for c in categories], labels,
                                 [im.get("file_name") for im in images],
                                 [im.get("height") for im in images],
                                 [im.get("width") for im in images], path)


def _size(root, tag):
    node = root.find(f"size/{tag}")
    return int(float(node.text)) if node is not None and node.text else None


def _read_voc(split_file, annotation_dir):
    with open(split_file) as f:
        image_ids = [line.split()[0] for line in f if line.strip()]
    column = {name: k for k, name in enumerate(VOC_CLASSES)}
    labels = np.zeros((len(image_ids), len(VOC_CLASSES)), dtype=np.uint8)
    heights, widths = [], []
    for k, image_id in enumerate(image_ids):
        xml_path = os.path.join(annotation_dir, f"{image_id}.xml")
        if not os.path.isfile(xml_path):
            raise FileNotFoundError(f"{xml_path}: listed in {split_file} but missing; "
                                    "is Annotations/ complete?")
        try:
            root = ET.parse(xml_path).getroot()
            # difficult objects are labels too: the original VOC loader reads every object
            names = [obj.find("name").text.strip() for obj in root.findall("object")]
            heights.append(_size(root, "height"))
            widths.append(_size(root, "width"))
        except (ET.ParseError, AttributeError, ValueError) as e:
            raise LongTailFormatError(f"{xml_path}: not a VOC annotation ({e}); expected "
                                      "<annotation> with <object><name> entries.") from None
        for name in names:
            if name not in column:
                raise LongTailFormatError(f"{xml_path}: unknown VOC class {name!r}; expected "
                                          f"one of the 20 VOC classes {VOC_CLASSES}.")
            labels[k, column[name]] = 1
    return MultiLabelAnnotations(image_ids, list(VOC_CLASSES), labels,
                                 [f"JPEGImages/{i}.jpg" for i in image_ids], heights, widths,
                                 split_file)


def read_multilabel_annotations(path, voc_split="trainval"):
    """:class:`MultiLabelAnnotations` ``(image_ids, class_names, labels (N, C) uint8)`` of a COCO
    json or a VOC tree.

    COCO: ``instances_*.json``; integer image ids in the json's order (images without labels
    stay, as all-zero rows), classes by category id. VOC: a ``VOC20xx`` folder (its
    ``ImageSets/Main/<voc_split>.txt``) or such a split file; 20 classes in the usual order.
    """
    how_to = ("Pass a COCO instances json, a VOC folder such as VOCdevkit/VOC2012 (with "
              "Annotations/ and ImageSets/Main/), or a VOC split file ImageSets/Main/<split>.txt.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder. {how_to}")
    if os.path.isdir(path):
        split_file = os.path.join(path, "ImageSets", "Main", f"{voc_split}.txt")
        annotation_dir = os.path.join(path, "Annotations")
        if not (os.path.isdir(annotation_dir) and os.path.isfile(split_file)):
            raise LongTailFormatError(f"{path}: folder without Annotations/ and "
                                      f"ImageSets/Main/{voc_split}.txt. {how_to}")
        return _read_voc(split_file, annotation_dir)
    if path.endswith(".txt"):
        annotation_dir = os.path.join(os.path.dirname(os.path.abspath(path)), os.pardir,
                                      os.pardir, "Annotations")
        if not os.path.isdir(annotation_dir):
            raise LongTailFormatError(f"{path}: a .txt file is read as a VOC split list, but "
                                      f"{os.path.normpath(annotation_dir)} is missing. {how_to}")
        return _read_voc(path, os.path.normpath(annotation_dir))
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise LongTailFormatError(f"{path}: not a json file ({e}). {how_to}") from None
    if not (isinstance(data, dict) and {"images", "annotations", "categories"} <= set(data)):
        raise LongTailFormatError(f"{path}: json without the COCO keys 'images', 'annotations' "
                                  f"and 'categories'. {how_to}")
    return _read_coco(path, data)
