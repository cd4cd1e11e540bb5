# Copyright (c) lt_d2 contributors.
"""The detections lvis-api evaluates, as arrays: :func:`detections` for
:func:`lt_d2.evaluation.lvis_fast.evaluate_lvis`, and the columnar result format.

``LVISResults`` keeps the ``max_dets`` top-scoring detections of each image (ties: input
order) and computes areas (boxes when the first result has a "bbox", masks otherwise);
``LVISEval`` then evaluates a detection only where its category is in the image's ground truth
or ``neg_category_ids`` (federated filtering) and its area is in (0, inf). Detections come as
lvis-format dicts, a json path, an ``lvis.LVISResults``, or columns (:func:`columnar_results`;
masks as a list of RLE dicts or an :class:`RLEColumn`).
"""
import itertools
import json
import os
from collections.abc import Mapping
from operator import itemgetter

import numpy as np
import pycocotools.mask as mask_utils

from . import lvis_fast_masks
from .lvis_fast_masks import ParsedMasks
from .rle_column import RLEColumn, compressed_counts


def to_rle(segm, height, width):
    """lvis-api's ``ann_to_rle``: polygons and uncompressed RLE to compressed RLE."""
    if isinstance(segm, list):
        parts = mask_utils.frPyObjects(segm, height, width)
        # a single part needs no merge: pycocotools' rleMerge would return a copy of it
        return parts[0] if len(parts) == 1 else mask_utils.merge(parts)
    if isinstance(segm["counts"], list):
        return mask_utils.frPyObjects(segm, height, width)
    return segm


def _bad_input(problem, values):
    values = np.asarray(values)
    examples = ", ".join(repr(v) for v in values[:5].tolist())
    return ValueError(f"{len(values)} results have {problem}, e.g. {examples}")


def detections(results, gt, iou_type, max_dets, use_mask_area):
    """Arrays of the detections lvis-api evaluates, sorted by (image, category, -score, input)."""
    given_area = hasattr(results, "dataset")  # lvis.LVISResults: capped, areas computed
    if given_area:
        results, max_dets = results.dataset["annotations"], -1
    elif isinstance(results, (str, os.PathLike)):
        with open(results) as f:
            results = json.load(f)
    columns = isinstance(results, Mapping)
    image, cat, score = _image_category_score(results, columns, gt)
    n = len(score)
    rank, num_ranks = _score_rank(score)
    # LVISResults decides box or mask areas from its first result after the cap
    keep, first = _cap_per_image(image, rank, num_ranks, max_dets)
    if columns:
        box_area = n and not use_mask_area and "bbox" in results
    else:
        box_area = n and not given_area and not use_mask_area and "bbox" in results[first]
    need_box = iou_type == "bbox" or box_area
    need_rle = iou_type == "segm" or not (box_area or given_area)
    image, cat, rank = image[keep], cat[keep], rank[keep]
    group = image * gt["num_cats"] + cat
    # federated filtering first: masks are converted and measured only where they can count
    # (boxes of every result are still read, for the NaN check)
    eligible = np.isin(group, gt["present"]) | np.isin(group, gt["negative"])
    rows = np.flatnonzero(eligible)  # masks: compressed RLEs of these rows only
    box, masks, sub = _geometry(results, columns, keep, rows, gt["image_ids"][image], gt["hw"],
                                need_box, need_rle, box_area)
    if need_rle and lvis_fast_masks.AVAILABLE:  # parsed once, for the areas and the IoUs
        masks = ParsedMasks(masks)
    if given_area:
        area = np.fromiter((r["area"] for r in sub), np.float64, len(sub))
    elif box_area:
        area = box[:, 2] * box[:, 3]
    else:  # 0 (dropped) where not eligible
        area = np.zeros(len(keep))
        area[rows] = _mask_areas(masks)
    del sub

    evaluated = (area > 0) & (area < np.inf) & eligible
    order = np.flatnonzero(evaluated)
    order = order[_stable_order(group[order], rank[order], num_ranks)]
    det = dict(image=image[order], cat=cat[order], score_rank=rank[order], num_ranks=num_ranks,
               area=area[order], not_exhaustive=np.isin(group[order], gt["not_exhaustive"]))
    if iou_type == "bbox":
        det["box"] = box[order]
        return det
    mask_row = np.full(len(keep), -1, np.int64)
    mask_row[rows] = np.arange(len(rows))
    if lvis_fast_masks.AVAILABLE:
        det["masks"], det["mask_row"] = masks, mask_row[order]
    else:
        det["rle"] = [masks[i] for i in mask_row[order].tolist()]
    return det


def _image_category_score(results, columns, gt):
    """(image index, category index, score) of each result; indices into the dataset's sorted
    image and category ids, which the results' ids must be among."""
    if columns:
        raw_image, raw_cat, score = _check_columns(results)
    else:
        n = len(results)
        try:
            raw_image = np.fromiter(map(itemgetter("image_id"), results), np.int64, n)
            raw_cat = np.fromiter(map(itemgetter("category_id"), results), np.int64, n)
            score = np.fromiter(map(itemgetter("score"), results), np.float64, n)
        except KeyError as e:
            raise ValueError(f"every result needs image_id, category_id and score; missing {e}"
                             ) from None
    image_ids = gt["image_ids"]
    image = np.searchsorted(image_ids, raw_image).clip(0, len(image_ids) - 1)
    unknown = image_ids[image] != raw_image
    if unknown.any():
        raise _bad_input("an image_id that is not in the dataset", np.unique(raw_image[unknown]))
    cat_ids = gt["cat_ids"]
    cat = np.searchsorted(cat_ids, raw_cat).clip(0, max(len(cat_ids) - 1, 0))
    unknown = cat_ids[cat] != raw_cat
    if unknown.any():
        raise _bad_input("a category_id that is not in the dataset", np.unique(raw_cat[unknown]))
    if np.isnan(score).any():
        raise _bad_input("a NaN score", np.flatnonzero(np.isnan(score)))
    return image, cat, score


def _cap_per_image(image, rank, num_ranks, max_dets):
    """LVISResults' cap of ``max_dets`` (< 0: none) top-scoring results per image, ties in
    input order: (the kept results' indices in input order, the index of the first of them)."""
    n = len(image)
    keep, first = np.arange(n), 0
    if max_dets >= 0 and n and np.bincount(image).max() > max_dets:
        by_image = _stable_order(image, rank, num_ranks)
        sorted_image = image[by_image]
        position = np.arange(n) - np.searchsorted(sorted_image, sorted_image)
        keep = np.sort(by_image[position < max_dets])
        if np.count_nonzero(image == image[0]) > max_dets:
            first = by_image[np.searchsorted(sorted_image, image[0])]
    return keep, first


def _geometry(results, columns, keep, rows, image_id, hw, need_box, need_rle, box_area):
    """(boxes of the kept results, checked for NaN, when needed; the masks of keep[rows] as an
    :class:`RLEColumn` when needed; the kept result dicts, None for columns)."""
    if columns:
        box, masks = _column_geometry(results, keep, image_id, hw, need_rle, rows)
        sub = None
    else:
        sub = results if len(keep) == len(results) else [results[i] for i in keep.tolist()]
        box = None
        masks = _dict_masks(list(map(sub.__getitem__, rows.tolist())), hw) if need_rle else None
    if need_rle:  # converted once: for the boxes of mask-only results, the areas and the IoUs
        masks = _compressed_rles(masks, image_id[rows], hw)
    if need_box and columns and box is None:
        # mask-only results get their mask's box, as LVISResults gives them
        box = np.zeros((len(keep), 4))
        if len(masks):
            box[rows] = mask_utils.toBbox(list(masks))
    if need_box and not columns:
        box = _dict_boxes(sub, masks, rows, box_area)
    if need_box and np.isnan(box).any():
        raise _bad_input("a NaN in bbox", np.flatnonzero(np.isnan(box).any(1)))
    return box, masks, sub


def _dict_masks(picked, hw):
    """The segmentations of the result dicts ``picked`` as given (made compressed RLEs later);
    a box stands for a missing mask, as in LVISResults."""
    try:
        return [r["segmentation"] for r in picked]
    except KeyError:
        pass
    try:
        return [r["segmentation"] if "segmentation" in r
                else to_rle([_box_polygon(r["bbox"])], *hw[r["image_id"]]) for r in picked]
    except KeyError as e:
        raise ValueError(f"segm results need a segmentation (or bbox); missing {e}") from None


def _dict_boxes(sub, masks, rows, box_area):
    """(len(sub), 4) boxes of the result dicts ``sub``; ``masks``: those of sub[rows]."""
    try:
        return np.fromiter(itertools.chain.from_iterable(map(itemgetter("bbox"), sub)),
                           np.float64, 4 * len(sub)).reshape(-1, 4)
    except KeyError:
        if box_area:
            raise ValueError("some results lack a bbox while the first has one") from None
    # mask-only results get their mask's box, as in LVISResults (masks exist here)
    mask_of = dict(zip(rows.tolist(), range(len(rows))))
    return np.array([r["bbox"] if "bbox" in r else mask_utils.toBbox(masks[mask_of[i]])
                     if i in mask_of else _NO_BOX for i, r in enumerate(sub)],
                    np.float64).reshape(-1, 4)


def _mask_areas(masks):
    if lvis_fast_masks.AVAILABLE:
        return masks.area  # ParsedMasks
    # pycocotools' area() overflows a uint8 count beyond 255 masks (numpy 2)
    return np.concatenate([np.zeros(0)] + [mask_utils.area(list(masks[i:i + 255]))
                                           for i in range(0, len(masks), 255)])


def columnar_results(results):
    """lvis-format result dicts as the columns :func:`evaluate_lvis` takes (same order)."""
    n = len(results)
    columns = dict(
        image_id=np.fromiter(map(itemgetter("image_id"), results), np.int64, n),
        category_id=np.fromiter(map(itemgetter("category_id"), results), np.int64, n),
        score=np.fromiter(map(itemgetter("score"), results), np.float64, n))
    if n and "bbox" in results[0]:
        columns["bbox"] = np.array([r["bbox"] for r in results], np.float64).reshape(-1, 4)
    if n and "segmentation" in results[0]:
        columns["segmentation"] = [r["segmentation"] for r in results]
    return columns


def result_dicts(columns):
    """The inverse of :func:`columnar_results`: lvis-format dicts, for lvis-api or json."""
    image_id, category_id, score = (np.asarray(columns[k]).tolist()
                                    for k in ("image_id", "category_id", "score"))
    # detectron2's key order, so that json dumps of either look alike
    fields = [("image_id", image_id), ("category_id", category_id)]
    if "bbox" in columns:
        fields.append(("bbox", np.asarray(columns["bbox"]).reshape(-1, 4).tolist()))
    fields.append(("score", score))
    if "segmentation" in columns:
        fields.append(("segmentation", columns["segmentation"]))
    names = [name for name, _ in fields]
    return [dict(zip(names, values)) for values in zip(*(column for _, column in fields))]


def _check_columns(columns):
    try:
        raw_image, raw_cat, score = (np.asarray(columns[k]) for k in
                                     ("image_id", "category_id", "score"))
    except KeyError as e:
        raise ValueError(f"columnar results need image_id, category_id and score; missing {e}"
                         ) from None
    n = len(score)
    lengths = {k: len(v) for k, v in columns.items()}
    if set(lengths.values()) - {n}:
        raise ValueError(f"columnar results must have one row per detection: lengths {lengths}")
    if n and "bbox" not in columns and "segmentation" not in columns:
        raise ValueError("columnar results need a bbox or a segmentation column")
    # a float id column would be truncated silently by the cast below
    for name, ids in (("image_id", raw_image), ("category_id", raw_cat)):
        if n and ids.dtype.kind not in "iu":
            raise ValueError(f"columnar {name} must be integers, got {ids.dtype}")
    return raw_image.astype(np.int64), raw_cat.astype(np.int64), score.astype(np.float64)


def _column_geometry(columns, keep, image_id, hw, need_rle, rows):
    """(boxes, masks) of the rows keep of columnar results: boxes of all of them (None without
    a bbox column), the masks of keep[rows] as given (None when not needed)."""
    box = masks = None
    if "bbox" in columns:
        box = np.asarray(columns["bbox"], np.float64).reshape(-1, 4)[keep]
    if need_rle:
        segm = columns.get("segmentation")
        if isinstance(segm, RLEColumn):
            masks = segm.take(keep[rows])
        elif segm is not None:
            masks = list(map(segm.__getitem__, keep[rows].tolist()))
        elif box is None:  # no rows (_check_columns)
            masks = []
        else:  # boxes as masks, as LVISResults does for box-only results
            masks = [to_rle([_box_polygon(b)], *hw[i])
                     for b, i in zip(box[rows].tolist(), image_id[rows].tolist())]
    return box, masks


def _compressed_rles(masks, image_id, hw):
    """masks (an RLEColumn, or a list of RLE dicts or polygons) as an :class:`RLEColumn`; what
    is not a compressed RLE is converted with its image's size, as lvis-api's ann_to_rle."""
    if isinstance(masks, RLEColumn):
        return masks
    counts = compressed_counts(masks)
    if counts is None:  # polygons or uncompressed RLEs
        masks = [to_rle(m, *hw[i]) for m, i in zip(masks, image_id.tolist())]
    return RLEColumn.from_rles(masks, counts)


def _score_rank(score):
    """Dense rank of each score, highest first; equal scores share a rank."""
    order = np.argsort(-score, kind="stable")
    ordered = score[order]
    rank = np.empty(len(score), np.int64)
    rank[order] = np.cumsum(np.r_[False, ordered[1:] != ordered[:-1]])
    return rank, int(rank.max()) + 1 if len(rank) else 1


def _stable_order(major, minor, num_minor):
    """Indices that sort by (major, minor, index); one stable sort of a combined int64 key."""
    if len(major) == 0 or (int(major.max()) + 1) * num_minor < 2 ** 62:
        return np.argsort(major * num_minor + minor, kind="stable")
    return np.lexsort((minor, major))


_NO_BOX = [0.0, 0.0, 0.0, 0.0]  # of a result that is dropped anyway


def _box_polygon(box):
    x1, y1, w, h = box
    return [x1, y1, x1, y1 + h, x1 + w, y1 + h, x1 + w, y1]
