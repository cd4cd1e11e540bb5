# Copyright (c) lt_d2 contributors.
"""Loading and registering LVIS- and COCO-format detection datasets.

:func:`register_lt_dataset` registers any LVIS- or COCO-format json. :func:`load_lt_json` reads
the json once, checks it, converts it to Detectron2's dataset dicts (the same dicts as
detectron2's ``load_lvis_json`` / ``load_coco_json`` give for boxes and polygons) and puts the
class names, id mapping, evaluator type and class statistics (see :mod:`lt_d2.data.class_stats`)
into the dataset's metadata.

Built-in names (registered on import, paths under ``$DETECTRON2_DATASETS``, default
``datasets``): detectron2's LVIS v0.5 / v1 splits, re-registered with this loader so that a
missing file names the expected layout, and ``lt_synthetic_{train,val}``.
"""
import json
import logging
import os
from functools import partial

import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from .class_stats import class_stats_from_annotations, set_class_stats

logger = logging.getLogger(__name__)

LVIS_LAYOUT_HINT = (
    "LVIS expects $DETECTRON2_DATASETS/lvis/lvis_v1_{train,val}.json (or lvis_v0.5_*.json) and the "
    "COCO 2017 images in $DETECTRON2_DATASETS/coco/{train2017,val2017}/; see datasets/README.md."
)
SYNTHETIC_HINT = (
    "Generate it with `python datasets/prepare_synthetic_lt.py` (or `make demo`); it is written "
    "to $DETECTRON2_DATASETS/lt_synthetic/."
)
SYNTHETIC_SPLITS = {
    "lt_synthetic_train": ("lt_synthetic/", "lt_synthetic/annotations/lt_synthetic_train.json"),
    "lt_synthetic_val": ("lt_synthetic/", "lt_synthetic/annotations/lt_synthetic_val.json"),
}


def datasets_root():
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


class DatasetFormatError(ValueError):
    """A dataset json that is not valid LVIS / COCO detection data."""


def check_dataset_files(dataset_name):
    """Raise FileNotFoundError with the fix if a registered dataset's files are missing."""
    meta = MetadataCatalog.get(dataset_name)
    for key in ("json_file", "image_root", "image_ids_file"):
        path = meta.get(key, None)
        if path is not None and not os.path.exists(path):
            raise FileNotFoundError(
                f"Dataset '{dataset_name}': {key} '{path}' does not exist. Datasets are looked up "
                f"under $DETECTRON2_DATASETS (now '{datasets_root()}'). "
                f"{meta.get('layout_hint', 'See datasets/README.md for the expected layout.')}"
            )


def _validate(data, json_file):
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{json_file}: the top level must be a json object.")
    for key in ("categories", "images", "annotations"):
        if key not in data:
            raise DatasetFormatError(
                f"{json_file}: missing the '{key}' list; LVIS/COCO detection jsons have "
                "'categories', 'images' and 'annotations'."
            )
    if not data["categories"]:
        raise DatasetFormatError(f"{json_file}: 'categories' is empty.")
    cat_ids = {c["id"] for c in data["categories"]}
    img_ids = {img["id"] for img in data["images"]}
    bad_cat = [a for a in data["annotations"] if a["category_id"] not in cat_ids]
    if bad_cat:
        raise DatasetFormatError(
            f"{json_file}: {len(bad_cat)} annotations have a category_id that is not in "
            f"'categories' (first: annotation {bad_cat[0].get('id')} with category_id "
            f"{bad_cat[0]['category_id']}). Fix the json or add the category."
        )
    bad_img = [a for a in data["annotations"] if a["image_id"] not in img_ids]
    if bad_img:
        raise DatasetFormatError(
            f"{json_file}: {len(bad_img)} annotations refer to an image_id that is not in "
            f"'images' (first: annotation {bad_img[0].get('id')}, image_id {bad_img[0]['image_id']})."
        )
    ann_ids = [a["id"] for a in data["annotations"] if "id" in a]
    if len(set(ann_ids)) != len(ann_ids):
        raise DatasetFormatError(f"{json_file}: annotation ids are not unique.")


def is_lvis_format(data):
    """LVIS jsons carry federated labels on images or a frequency group on categories."""
    return any("frequency" in c for c in data["categories"][:1]) or any(
        "neg_category_ids" in img for img in data["images"][:1]
    )


def _file_name(img, image_root, lvis):
    if lvis and "coco_url" in img:
        # as detectron2: the split folder comes from coco_url (LVIS v1 mixes train2017/val2017)
        split_folder, name = img["coco_url"].split("/")[-2:]
        return os.path.join(image_root, split_folder, name)
    return os.path.join(image_root, img["file_name"])


def _convert_annotation(ann, id_map, lvis, json_file):
    obj = {"bbox": ann["bbox"], "bbox_mode": BoxMode.XYWH_ABS,
           "category_id": id_map[ann["category_id"]]}
    if not lvis:
        obj["iscrowd"] = ann.get("iscrowd", 0)
    segm = ann.get("segmentation")
    if isinstance(segm, list):
        valid = [p for p in segm if len(p) % 2 == 0 and len(p) >= 6]
        if lvis and (len(valid) != len(segm) or not valid):
            raise DatasetFormatError(
                f"{json_file}: annotation {ann.get('id')} has no polygon or one with < 3 points.")
        if valid:  # as detectron2's COCO loader, drop invalid polygons
            obj["segmentation"] = valid
    elif isinstance(segm, dict):  # COCO RLE; uncompressed counts are compressed as detectron2 does
        if isinstance(segm.get("counts"), list):
            segm = mask_util.frPyObjects(segm, *segm["size"])
        obj["segmentation"] = segm
    return obj


def load_lt_json(json_file, image_root, dataset_name=None):
    """Load an LVIS- or COCO-format json as Detectron2 dataset dicts.

    Args:
        json_file (str): annotation file.
        image_root (str): folder the image paths are relative to.
        dataset_name (str or None): if given, its metadata receives ``thing_classes``,
            ``thing_dataset_id_to_contiguous_id``, ``evaluator_type`` ("lvis" or "coco") and the
            class statistics (``class_image_count`` etc.).

    Returns:
        list[dict]: one record per image, sorted by image id.
    """
    if not os.path.isfile(json_file):
        hint = MetadataCatalog.get(dataset_name).get("layout_hint", "") if dataset_name else ""
        raise FileNotFoundError(
            f"Annotation file '{json_file}' does not exist (DETECTRON2_DATASETS='{datasets_root()}'"
            f"). {hint}".strip()
        )
    with open(json_file) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DatasetFormatError(f"{json_file} is not valid json: {e}") from e
    _validate(data, json_file)
    lvis = is_lvis_format(data)
    cats = sorted(data["categories"], key=lambda c: c["id"])
    id_map = {c["id"]: i for i, c in enumerate(cats)}

    anns_by_image = {}
    for ann in data["annotations"]:
        anns_by_image.setdefault(ann["image_id"], []).append(ann)
    dataset_dicts = []
    for img in sorted(data["images"], key=lambda i: i["id"]):
        record = {
            "file_name": _file_name(img, image_root, lvis),
            "height": img["height"],
            "width": img["width"],
            "image_id": img["id"],
        }
        if lvis:
            record["not_exhaustive_category_ids"] = img.get("not_exhaustive_category_ids", [])
            record["neg_category_ids"] = img.get("neg_category_ids", [])
        record["annotations"] = [
            _convert_annotation(a, id_map, lvis, json_file) for a in anns_by_image.get(img["id"], [])
        ]
        dataset_dicts.append(record)
    logger.info("Loaded %d images (%s format) from %s", len(dataset_dicts),
                "LVIS" if lvis else "COCO", json_file)

    if dataset_name is not None:
        meta = MetadataCatalog.get(dataset_name)
        names = [c["name"] for c in cats]
        existing = meta.get("thing_classes", None)
        if existing is not None and len(existing) != len(names):
            raise DatasetFormatError(
                f"Dataset '{dataset_name}' was registered with {len(existing)} classes but "
                f"{json_file} has {len(names)}.")
        if existing is None:
            meta.thing_classes = names
        if meta.get("thing_dataset_id_to_contiguous_id", None) is None:
            meta.thing_dataset_id_to_contiguous_id = id_map
        if meta.get("evaluator_type", None) is None:
            meta.evaluator_type = "lvis" if lvis else "coco"
        set_class_stats(dataset_name, class_stats_from_annotations(data, id_map))
    return dataset_dicts


def register_lt_dataset(name, json_file, image_root, *, evaluator_type=None, layout_hint=None):
    """Register an LVIS- or COCO-format json under ``name`` (lazy: read on first use).

    ``evaluator_type`` ("lvis" or "coco") is found from the json when it is first loaded if not
    given. ``layout_hint`` is added to the error raised when the files are missing.
    """
    DatasetCatalog.register(name, partial(load_lt_json, json_file, image_root, name))
    meta = {"json_file": json_file, "image_root": image_root}
    if evaluator_type is not None:
        meta["evaluator_type"] = evaluator_type
    if layout_hint is not None:
        meta["layout_hint"] = layout_hint
    MetadataCatalog.get(name).set(**meta)


def _reregister_builtin_lvis():
    """Give detectron2's built-in LVIS splits this loader (checks, class statistics)."""
    for name in list(DatasetCatalog.list()):
        if not name.startswith("lvis_"):
            continue
        meta = MetadataCatalog.get(name)
        json_file, image_root = meta.get("json_file", None), meta.get("image_root", None)
        if json_file is None or image_root is None:
            continue
        DatasetCatalog.remove(name)
        DatasetCatalog.register(name, partial(load_lt_json, json_file, image_root, name))
        if meta.get("layout_hint", None) is None:
            meta.layout_hint = LVIS_LAYOUT_HINT


OPENIMAGES_SPLITS = {
    "openimages_challenge2019_train": ("openimages/train", "openimages/annotations/challenge2019_train.json"),
    "openimages_challenge2019_val": ("openimages/validation", "openimages/annotations/challenge2019_val.json"),
}


def register_all_builtin(root=None):
    from .multilabel_datasets import register_all_multilabel
    from .openimages import register_openimages

    root = datasets_root() if root is None else root
    _reregister_builtin_lvis()
    register_all_multilabel(root)
    for name, (image_root, json_file) in OPENIMAGES_SPLITS.items():
        if name not in DatasetCatalog.list():
            register_openimages(name, os.path.join(root, json_file), os.path.join(root, image_root))
    for name, (image_root, json_file) in SYNTHETIC_SPLITS.items():
        if name in DatasetCatalog.list():
            continue
        register_lt_dataset(name, os.path.join(root, json_file), os.path.join(root, image_root),
                            evaluator_type="lvis", layout_hint=SYNTHETIC_HINT)
