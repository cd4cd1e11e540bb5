# Copyright (c) lt_d2 contributors.
"""Every dataset lt_d2 registers, as detectron2's ``data/datasets/builtin.py`` does for its own.

Paths are under ``$DETECTRON2_DATASETS`` (default ``datasets``); datasets/README.md shows the
layout each expects. The names:

* detectron2's LVIS v0.5 / v1 splits (``lvis_v1_train`` ...), re-registered with lt_d2's loader
  (:mod:`lt_d2.data.datasets`) so that they get its checks, class statistics and a missing-file
  error that names the expected layout;
* ``lt_synthetic_{train,val}``: the synthetic long-tailed detection set;
* ``openimages_challenge2019_{train,val}``: converted Open Images Challenge 2019 jsons;
* multi-label: ``coco_mlt_train`` / ``coco_mlt_val`` (COCO 2017), ``voc_mlt_train`` (VOC 2012
  trainval) / ``voc_mlt_test`` (VOC 2007 test), ``ml_synthetic_train`` / ``ml_synthetic_test``.

A name already in the DatasetCatalog is left as it is.
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from .catalog import datasets_root
from .datasets import register_lt_dataset
from .multilabel_datasets import register_multilabel_dataset
from .openimages import register_openimages

__all__ = ["register_all_builtin"]

LVIS_LAYOUT_HINT = (
    "LVIS expects $DETECTRON2_DATASETS/lvis/lvis_v1_{train,val}.json (or lvis_v0.5_*.json) and the "
    "COCO 2017 images in $DETECTRON2_DATASETS/coco/{train2017,val2017}/; see datasets/README.md."
)
SYNTHETIC_HINT = (
    "Generate it with `python datasets/prepare_synthetic_lt.py` (or `make demo`); it is written "
    "to $DETECTRON2_DATASETS/lt_synthetic/."
)
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

# name: (image root, json), relative to the dataset root
SYNTHETIC_SPLITS = {
    "lt_synthetic_train": ("lt_synthetic/", "lt_synthetic/annotations/lt_synthetic_train.json"),
    "lt_synthetic_val": ("lt_synthetic/", "lt_synthetic/annotations/lt_synthetic_val.json"),
}
OPENIMAGES_SPLITS = {
    "openimages_challenge2019_train": ("openimages/train",
                                       "openimages/annotations/challenge2019_train.json"),
    "openimages_challenge2019_val": ("openimages/validation",
                                     "openimages/annotations/challenge2019_val.json"),
}
# name: (annotations, image root, folder of the long-tailed subset's id list or None: all images)
MULTILABEL_SPLITS = {
    "coco_mlt_train": ("coco/annotations/instances_train2017.json", "coco/train2017",
                       "coco/longtail2017"),
    "coco_mlt_val": ("coco/annotations/instances_val2017.json", "coco/val2017", None),
    "voc_mlt_train": ("VOC2012/ImageSets/Main/trainval.txt", "VOC2012", "VOC2012/longtail2012"),
    "voc_mlt_test": ("VOC2007/ImageSets/Main/test.txt", "VOC2007", None),
    "ml_synthetic_train": ("ml_synthetic/annotations/pool.json", "ml_synthetic",
                           "ml_synthetic/longtail"),
    "ml_synthetic_test": ("ml_synthetic/annotations/test.json", "ml_synthetic", None),
}
ID_LIST_NAMES = ("img_id.json", "img_id.txt", "img_id.pkl")  # the last two: the DB project's


def register_builtin_lvis():
    """Give detectron2's built-in LVIS splits lt_d2's loader (checks, class statistics)."""
    for name in list(DatasetCatalog.list()):
        if not name.startswith("lvis_"):
            continue
        meta = MetadataCatalog.get(name)
        json_file, image_root = meta.get("json_file", None), meta.get("image_root", None)
        if json_file is None or image_root is None:
            continue
        DatasetCatalog.remove(name)
        hint = None if meta.get("layout_hint", None) is not None else LVIS_LAYOUT_HINT
        register_lt_dataset(name, json_file, image_root, layout_hint=hint)


def _first_existing(folder, names):
    paths = [os.path.join(folder, n) for n in names]
    return next((p for p in paths if os.path.exists(p)), paths[0])


def register_all_multilabel(root):
    for name, (ann, image_root, subset) in MULTILABEL_SPLITS.items():
        if name in DatasetCatalog.list():
            continue
        hint = SYNTHETIC_ML_HINT if name.startswith("ml_") else MLT_HINT
        subset = os.path.join(root, subset) if subset else None
        ids = _first_existing(subset, ID_LIST_NAMES) if subset else None
        stats = os.path.join(subset, "class_stats.json") if subset else None
        register_multilabel_dataset(name, os.path.join(root, ann), os.path.join(root, image_root),
                                    ids, class_stats_file=stats, layout_hint=hint)


def register_all_openimages(root):
    for name, (image_root, json_file) in OPENIMAGES_SPLITS.items():
        if name not in DatasetCatalog.list():
            register_openimages(name, os.path.join(root, json_file), os.path.join(root, image_root))


def register_all_synthetic(root):
    for name, (image_root, json_file) in SYNTHETIC_SPLITS.items():
        if name not in DatasetCatalog.list():
            register_lt_dataset(name, os.path.join(root, json_file),
                                os.path.join(root, image_root), evaluator_type="lvis",
                                layout_hint=SYNTHETIC_HINT)


def register_all_builtin(root=None):
    """Register every built-in dataset with its files under ``root`` (default
    ``$DETECTRON2_DATASETS``)."""
    root = datasets_root() if root is None else root
    register_builtin_lvis()
    register_all_multilabel(root)
    register_all_openimages(root)
    register_all_synthetic(root)
