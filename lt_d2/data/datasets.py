# Copyright (c) lt_d2 contributors.
"""LVIS- and COCO-format detection datasets: the loader and :func:`register_lt_dataset`.

:func:`load_lt_json` reads a json, checks it and converts it to Detectron2's dataset dicts (the
same dicts as detectron2's ``load_lvis_json`` / ``load_coco_json`` give for boxes and polygons);
:func:`lt_json_metadata` gives what the json says about the dataset (class names, id mapping,
evaluator type, class statistics). Both are pure: only the loader that
:func:`register_lt_dataset` puts in the DatasetCatalog writes the dataset's metadata.
The built-in datasets are registered in :mod:`lt_d2.data.builtin`.
"""
import json
import logging
import os
from functools import partial

import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from .catalog import DatasetFormatError, fill_metadata, require_file
from .class_stats import class_stats_from_annotations, class_stats_metadata

logger = logging.getLogger(__name__)

__all__ = ["is_lvis_format", "load_lt_json", "lt_json_dataset_dicts", "lt_json_metadata",
           "read_lt_json", "register_lt_dataset"]


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
    if len(cat_ids) != len(data["categories"]):
        raise DatasetFormatError(f"{json_file}: category ids are not unique.")
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
            f"'images' (first: annotation {bad_img[0].get('id')}, "
            f"image_id {bad_img[0]['image_id']})."
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


def read_lt_json(json_file, dataset_name=None):
    """The checked contents of an LVIS- or COCO-format json. ``dataset_name`` (optional) is
    named, with its layout hint, in the error raised when the file is missing."""
    require_file(json_file, "json_file", dataset_name)
    with open(json_file) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DatasetFormatError(f"{json_file} is not valid json: {e}") from e
    _validate(data, json_file)
    return data


def _id_map(data):
    """category id -> contiguous id, in category id order."""
    return {cat_id: i for i, cat_id in enumerate(sorted(c["id"] for c in data["categories"]))}


def lt_json_dataset_dicts(data, image_root, json_file):
    """Dataset dicts of the contents ``data`` of ``json_file``: one per image, by image id."""
    lvis = is_lvis_format(data)
    id_map = _id_map(data)
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
        record["annotations"] = [_convert_annotation(a, id_map, lvis, json_file)
                                 for a in anns_by_image.get(img["id"], [])]
        dataset_dicts.append(record)
    logger.info("Loaded %d images (%s format) from %s", len(dataset_dicts),
                "LVIS" if lvis else "COCO", json_file)
    return dataset_dicts


def lt_json_metadata(data):
    """What the json contents ``data`` say about their dataset: ``thing_classes``,
    ``thing_dataset_id_to_contiguous_id``, ``evaluator_type`` ("lvis" or "coco") and the class
    statistics (the keys of :mod:`lt_d2.data.class_stats`)."""
    id_map = _id_map(data)
    names = {c["id"]: c["name"] for c in data["categories"]}
    return {
        "thing_classes": [names[i] for i in sorted(id_map, key=id_map.get)],
        "thing_dataset_id_to_contiguous_id": id_map,
        "evaluator_type": "lvis" if is_lvis_format(data) else "coco",
        **class_stats_metadata(class_stats_from_annotations(data, id_map), id_map),
    }


def load_lt_json(json_file, image_root, dataset_name=None):
    """Load an LVIS- or COCO-format json as Detectron2 dataset dicts.

    Args:
        json_file (str): annotation file.
        image_root (str): folder the image paths are relative to.
        dataset_name (str or None): named (with its layout hint) if ``json_file`` is missing.

    Returns:
        list[dict]: one record per image, sorted by image id.
    """
    return lt_json_dataset_dicts(read_lt_json(json_file, dataset_name), image_root, json_file)


def _load_registered(dataset_name, json_file, image_root):
    data = read_lt_json(json_file, dataset_name)
    dataset_dicts = lt_json_dataset_dicts(data, image_root, json_file)
    fill_metadata(dataset_name, lt_json_metadata(data), json_file)
    return dataset_dicts


def register_lt_dataset(name, json_file, image_root, *, evaluator_type=None, layout_hint=None):
    """Register an LVIS- or COCO-format json under ``name`` (lazy: read on first use).

    Loading it puts :func:`lt_json_metadata` into its metadata. ``evaluator_type`` ("lvis" or
    "coco") is found from the json if not given. ``layout_hint`` is added to the error raised
    when the files are missing.
    """
    DatasetCatalog.register(name, partial(_load_registered, name, json_file, image_root))
    meta = {"json_file": json_file, "image_root": image_root}
    if evaluator_type is not None:
        meta["evaluator_type"] = evaluator_type
    if layout_hint is not None:
        meta["layout_hint"] = layout_hint
    MetadataCatalog.get(name).set(**meta)
