# Copyright (c) lt_d2 contributors.
"""Multi-label classification datasets: COCO-MLT, VOC-MLT and the synthetic multi-label set.

A multi-label dataset is an annotation source (a COCO-format json, or a VOC split file) plus,
for long-tailed training sets, a list of the image ids to keep (``img_id.json`` written by
``tools/create_longtail_dataset.py``, or the DB-loss project's one-id-per-line text files).
Its dicts hold ``file_name``, ``image_id``, ``height``, ``width`` and one
``{"category_id": contiguous id}`` per label in ``annotations``, so class statistics, samplers
and detectron2's histogram work on them unchanged.

Built-in names (under ``$DETECTRON2_DATASETS``): ``coco_mlt_train`` / ``coco_mlt_val``
(COCO 2017), ``voc_mlt_train`` (VOC 2012 trainval) / ``voc_mlt_test`` (VOC 2007 test),
``ml_synthetic_train`` / ``ml_synthetic_test``. See datasets/README.md for the layout.
"""
import json
import logging
import os
from functools import partial

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..grouping import lvis_frequency
from .class_stats import ClassStats, set_class_stats
from .longtail_subset import read_multilabel_annotations

logger = logging.getLogger(__name__)

__all__ = ["load_multilabel_dataset", "read_image_id_list", "register_multilabel_dataset",
           "class_stats_from_file"]

ID_LIST_NAMES = ("img_id.json", "img_id.txt", "img_id.pkl")  # the last two: the DB project's
MLT_HINT = (
    "COCO-MLT expects $DETECTRON2_DATASETS/coco/{annotations/instances_{train,val}2017.json,"
    "train2017,val2017} and coco/longtail2017/img_id.json; VOC-MLT expects "
    "$DETECTRON2_DATASETS/VOC2012 (and VOC2007 for the test set) and VOC2012/longtail2012/"
    "img_id.json. Make the id lists with tools/create_longtail_dataset.py; see datasets/README.md."
)
SYNTHETIC_ML_HINT = (
    "Generate it with `python datasets/prepare_synthetic_lt.py --kind multilabel` (or `make "
    "demo-multilabel`); it is written to $DETECTRON2_DATASETS/ml_synthetic/."
)


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


def load_multilabel_dataset(ann_path, image_root, image_ids_file=None, dataset_name=None):
    """Dataset dicts of a multi-label dataset (see the module docstring).

    Args:
        ann_path: COCO-format json, VOC root or VOC ``ImageSets/Main/<split>.txt``.
        image_root: folder the annotation's file names are relative to.
        image_ids_file: keep only these images (None: all).
        dataset_name: if given, its metadata receives the class names, evaluator type
            ("multilabel") and class statistics.
    """
    ann = read_multilabel_annotations(ann_path)
    rows = list(range(len(ann.image_ids)))
    if image_ids_file is not None:
        rows = _select(ann, read_image_id_list(image_ids_file), image_ids_file)
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
                len(ann.class_names), ann_path)
    if dataset_name is not None:
        meta = MetadataCatalog.get(dataset_name)
        if meta.get("thing_classes", None) is None:
            meta.thing_classes = list(ann.class_names)
        image_count = ann.labels[rows].sum(0).astype(np.int64)
        num_images = int((ann.labels[rows].sum(1) > 0).sum())
        set_class_stats(dataset_name, ClassStats(image_count, image_count.copy(),
                                                 lvis_frequency(image_count), num_images))
    return dicts


def class_stats_from_file(path):
    """ClassStats from a ``class_stats.json`` of tools/create_longtail_dataset.py."""
    with open(path) as f:
        stats = json.load(f)
    image_count = np.asarray(stats["class_freq"], np.int64)
    return ClassStats(image_count, image_count.copy(), lvis_frequency(image_count),
                      int(stats["num_images"]))


def register_multilabel_dataset(name, ann_path, image_root, image_ids_file=None, *,
                                class_stats_file=None, class_names=None, layout_hint=None):
    """Register a multi-label dataset under ``name`` (lazy: read on first use).

    ``class_stats_file`` (optional) gives the training statistics without loading the images,
    e.g. to evaluate with head / medium / tail splits where only the test images are present.
    """
    DatasetCatalog.register(
        name, partial(load_multilabel_dataset, ann_path, image_root, image_ids_file, name))
    meta = {"json_file": ann_path, "image_root": image_root, "evaluator_type": "multilabel"}
    for key, value in (("image_ids_file", image_ids_file), ("class_stats_file", class_stats_file),
                       ("thing_classes", class_names), ("layout_hint", layout_hint)):
        if value is not None:
            meta[key] = value
    MetadataCatalog.get(name).set(**meta)


def _first_existing(folder, names):
    paths = [os.path.join(folder, n) for n in names]
    return next((p for p in paths if os.path.exists(p)), paths[0])


def register_all_multilabel(root):
    lt = {
        "coco_mlt": os.path.join(root, "coco", "longtail2017"),
        "voc_mlt": os.path.join(root, "VOC2012", "longtail2012"),
        "ml_synthetic": os.path.join(root, "ml_synthetic", "longtail"),
    }
    splits = {
        "coco_mlt_train": ("coco/annotations/instances_train2017.json", "coco/train2017", "coco_mlt"),
        "coco_mlt_val": ("coco/annotations/instances_val2017.json", "coco/val2017", None),
        "voc_mlt_train": ("VOC2012/ImageSets/Main/trainval.txt", "VOC2012", "voc_mlt"),
        "voc_mlt_test": ("VOC2007/ImageSets/Main/test.txt", "VOC2007", None),
        "ml_synthetic_train": ("ml_synthetic/annotations/pool.json", "ml_synthetic", "ml_synthetic"),
        "ml_synthetic_test": ("ml_synthetic/annotations/test.json", "ml_synthetic", None),
    }
    for name, (ann, image_root, subset) in splits.items():
        if name in DatasetCatalog.list():
            continue
        hint = SYNTHETIC_ML_HINT if name.startswith("ml_") else MLT_HINT
        ids = _first_existing(lt[subset], ID_LIST_NAMES) if subset else None
        stats = os.path.join(lt[subset], "class_stats.json") if subset else None
        register_multilabel_dataset(name, os.path.join(root, ann), os.path.join(root, image_root),
                                    ids, class_stats_file=stats, layout_hint=hint)
