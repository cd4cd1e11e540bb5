# Copyright (c) lt_d2 contributors.
"""Multi-label classification datasets (COCO-MLT, VOC-MLT, the synthetic multi-label set): the
loader and :func:`register_multilabel_dataset`.

A multi-label dataset is an annotation source (a COCO-format json, or a VOC split file) plus,
for long-tailed training sets, a list of the image ids to keep (``img_id.json`` written by
``tools/create_longtail_dataset.py``, or the DB-loss project's one-id-per-line text files).
Its dicts hold ``file_name``, ``image_id``, ``height``, ``width`` and one
``{"category_id": contiguous id}`` per label in ``annotations``, so class statistics, samplers
and detectron2's histogram work on them unchanged.

:func:`load_multilabel_dataset` and :func:`multilabel_metadata` are pure; only the loader that
:func:`register_multilabel_dataset` puts in the DatasetCatalog writes the dataset's metadata.
The built-in names are registered in :mod:`lt_d2.data.builtin`.
"""
import json
import logging
import os
from functools import partial

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..grouping import lvis_frequency
from .catalog import fill_metadata, require_file
from .class_stats import ClassStats, class_stats_metadata
from .multilabel_annotations import read_multilabel_annotations

logger = logging.getLogger(__name__)

__all__ = ["class_stats_from_file", "load_multilabel_dataset", "multilabel_metadata",
           "read_image_id_list", "register_multilabel_dataset"]


def read_image_id_list(path):
    """Image ids from a JSON list, or a text file with one id per line."""
    with open(path) as f:
        text = f.read()
    if path.endswith(".json"):
        try:
            ids = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"Image-id list {path} is not valid JSON: {e}") from e
        if not isinstance(ids, list):
            raise ValueError(f"Image-id list {path} must hold a JSON list of image ids.")
        return ids
    return [line.strip() for line in text.splitlines() if line.strip()]


def _select(ann, image_ids, id_list_path):
    index = {str(i): k for k, i in enumerate(ann.image_ids)}
    missing = [i for i in image_ids if str(i) not in index]
    if missing:
        raise ValueError(
            f"{len(missing)} image ids of {id_list_path} are not in {ann.source}, e.g. "
            f"{missing[:5]}. The list was made from another annotation file; rebuild it with "
            "tools/create_longtail_dataset.py from this one."
        )
    return sorted({index[str(i)] for i in image_ids})


def _read_selection(ann_path, image_ids_file, dataset_name=None):
    """The annotations of ``ann_path`` and the rows of the images to keep."""
    if dataset_name is not None:  # name the dataset and its layout hint if a file is missing
        require_file(ann_path, "json_file", dataset_name)
        if image_ids_file is not None:
            require_file(image_ids_file, "image_ids_file", dataset_name)
    ann = read_multilabel_annotations(ann_path)
    if image_ids_file is None:
        return ann, list(range(len(ann.image_ids)))
    return ann, _select(ann, read_image_id_list(image_ids_file), image_ids_file)


def _dataset_dicts(ann, rows, image_root):
    dicts = []
    for r in rows:
        dicts.append({
            "file_name": os.path.join(image_root, ann.file_names[r]),
            "image_id": ann.image_ids[r],
            "height": ann.heights[r],
            "width": ann.widths[r],
            "annotations": [{"category_id": int(c)} for c in np.nonzero(ann.labels[r])[0]],
        })
    absent = [d["file_name"] for d in dicts if not os.path.isfile(d["file_name"])]
    if absent:
        raise FileNotFoundError(
            f"{len(absent)} of {len(dicts)} images are missing from the image folder "
            f"'{image_root}', e.g. {absent[:5]}. Check that the folder holds the images the "
            "annotations (and the image-id list) name."
        )
    logger.info("Loaded %d multi-label images (%d classes) from %s", len(dicts),
                len(ann.class_names), ann.source)
    return dicts


def _metadata(ann, rows):
    labels = ann.labels[rows]
    image_count = labels.sum(0).astype(np.int64)
    num_images = int((labels.sum(1) > 0).sum())
    stats = ClassStats(image_count, image_count.copy(), lvis_frequency(image_count), num_images)
    return {"thing_classes": list(ann.class_names), **class_stats_metadata(stats)}


def load_multilabel_dataset(ann_path, image_root, image_ids_file=None):
    """Dataset dicts of a multi-label dataset (see the module docstring).

    Args:
        ann_path: COCO-format json, VOC root or VOC ``ImageSets/Main/<split>.txt``.
        image_root: folder the annotation's file names are relative to.
        image_ids_file: keep only these images (None: all).
    """
    return _dataset_dicts(*_read_selection(ann_path, image_ids_file), image_root)


def multilabel_metadata(ann_path, image_ids_file=None, dataset_name=None):
    """What the annotations say about the dataset: ``thing_classes`` and the class statistics
    of the kept images (keys of :mod:`lt_d2.data.class_stats`). ``dataset_name`` (optional) is
    named in the error raised when a file is missing."""
    return _metadata(*_read_selection(ann_path, image_ids_file, dataset_name))


def class_stats_from_file(path):
    """ClassStats from a ``class_stats.json`` of tools/create_longtail_dataset.py."""
    with open(path) as f:
        stats = json.load(f)
    image_count = np.asarray(stats["class_freq"], np.int64)
    return ClassStats(image_count, image_count.copy(), lvis_frequency(image_count),
                      int(stats["num_images"]))


def _load_registered(dataset_name, ann_path, image_root, image_ids_file):
    ann, rows = _read_selection(ann_path, image_ids_file, dataset_name)
    dicts = _dataset_dicts(ann, rows, image_root)
    fill_metadata(dataset_name, _metadata(ann, rows), ann_path)
    return dicts


def register_multilabel_dataset(name, ann_path, image_root, image_ids_file=None, *,
                                class_stats_file=None, class_names=None, layout_hint=None):
    """Register a multi-label dataset under ``name`` (lazy: read on first use).

    ``class_stats_file`` (optional) gives the training statistics without reading the
    annotations or images, e.g. to evaluate with head / medium / tail splits where only the test
    images are present.
    """
    DatasetCatalog.register(
        name, partial(_load_registered, name, ann_path, image_root, image_ids_file))
    meta = {"json_file": ann_path, "image_root": image_root, "evaluator_type": "multilabel"}
    for key, value in (("image_ids_file", image_ids_file), ("class_stats_file", class_stats_file),
                       ("thing_classes", class_names), ("layout_hint", layout_hint)):
        if value is not None:
            meta[key] = value
    MetadataCatalog.get(name).set(**meta)
