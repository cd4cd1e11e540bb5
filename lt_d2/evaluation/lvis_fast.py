# Copyright (c) lt_d2 contributors.
"""LVIS evaluation with lvis-api's (lvis==0.5.3) exact numbers, vectorised with NumPy.

:func:`evaluate_lvis` reproduces ``LVISResults`` + ``LVISEval.run()``: the per-image cap of
``max_dets`` top-scoring detections (ties: input order), the drop of detections and ground truth
whose area is not in (0, inf), federated filtering (a detection counts only on images where its
category is in the ground truth or in ``neg_category_ids``), unmatched detections of
``not_exhaustive_category_ids`` ignored, area-range ignore flags, greedy matching
(:mod:`.lvis_fast_match`), the 101-point interpolated precision and the r/c/f split. Precision
and recall arrays are built with the same floating-point operations, and summarised like
``LVISEval._summarize``, so the metrics are bit-identical rather than merely close.

Differences, all on inputs lvis-api rejects or crashes on: unknown category ids, image ids
outside the dataset, NaN scores or boxes raise ValueError (lvis-api drops unknown categories
silently); an empty result list (lvis-api: IndexError) gives what lvis-api's accumulation
defines for "no detections": 0 for every metric that has ground truth, -1 where none has.

Masks: ground-truth polygons are rasterised (:mod:`.lvis_fast_polygons`) and detection RLEs
parsed (:mod:`.lvis_fast_masks`) by numba-compiled ports of pycocotools' C, each mask once, and
a mask IoU is computed only where it can reach 0.5; without numba, pycocotools does it all.

tools/benchmark_lvis_eval.py measures it on an LVIS-v1-like synthetic val set: bbox, 19,809
images and 5.9M detections given as columns, ~5 s and 2.3 GiB peak for the whole process
(lvis-api: ~6 minutes, extrapolated from 2,000 images: ~70x); segm, 1,000 images with masks as
an :class:`RLEColumn`, ~0.3 s against ~20 s (~70x).
"""
import itertools
import json
import os
from collections.abc import Mapping
from operator import itemgetter

import numpy as np
import pycocotools.mask as mask_utils

from . import lvis_fast_masks
from .lvis_fast_accumulate import accumulate, summarize
from .lvis_fast_masks import ParsedMasks
from .lvis_fast_polygons import ground_truth_masks
from .rle_column import RLEColumn, compressed_counts
from .lvis_fast_match import (AREA_RANGES, FREQUENCIES, box_candidate_pairs, greedy_match,
                              mask_candidate_pairs)



def evaluate_lvis(lvis_gt, results, iou_type="bbox", max_dets=300, use_mask_area=False):
    """Return (metrics OrderedDict with lvis-api's keys, precision [T, R, K, A]).

    lvis_gt: ``lvis.LVIS``, path of an LVIS json, or its dict. results: list of lvis-format
    dicts, a path to their json, an ``lvis.LVISResults`` (already capped; its areas are used), or
    the same detections as columns (:func:`columnar_results`), which take ~10x less memory than
    millions of dicts: a dict of "image_id" (N,), "category_id" (N,), "score" (N,), and "bbox"
    (N, 4) [x, y, w, h] and/or "segmentation" (N RLEs or polygons). Row i of the columns stands
    for results[i], so the order (which breaks score ties) is kept.
    max_dets: per-image cap, -1 for none. Like ``LVISResults``, detection areas (for the
    small/medium/large ranges) are box areas when the first result has a "bbox" (the columns:
    when there is a "bbox" column), mask areas otherwise; use_mask_area=True takes mask areas
    regardless (detectron2 drops the boxes for this). The recall key stays "AR@300" whatever
    max_dets, as in lvis-api.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    dataset = _load_dataset(lvis_gt)
    gt = _ground_truth(dataset, iou_type)
    det = _detections(results, gt, iou_type, max_dets, use_mask_area)
    det_group = det["image"] * gt["num_cats"] + det["cat"]
    # the ground truths of each detection's group; searched once per group, not per det
    first = np.flatnonzero(np.diff(det_group, prepend=-1))
    lo, hi = (np.searchsorted(gt["group"], det_group[first], side) for side in ("left", "right"))
    group_size = np.diff(first, append=len(det_group))
    gt_start, gt_count = np.repeat(lo, group_size), np.repeat(hi - lo, group_size)
    if iou_type == "bbox":
        pairs = box_candidate_pairs(det["box"], gt_start, gt_count, gt["box"])
    elif "masks" in det:
        pairs = lvis_fast_masks.mask_candidate_pairs(
            det["masks"], det["mask_row"], det_group, gt["masks"], gt["group"])
    else:  # pycocotools decodes every mask it is given: only those with a ground truth to meet
        with_gt = np.flatnonzero(gt_count)
        pair_det, pair_gt, pair_iou = mask_candidate_pairs(
            [det["rle"][i] for i in with_gt.tolist()], det["image"][with_gt], det["cat"][with_gt],
            gt["rle"], gt["image"], gt["cat"])
        pairs = with_gt[pair_det], pair_gt, pair_iou
    active, state = greedy_match(*pairs, det_group, gt["ignore"], gt["id"] == 0)
    precision, recall = accumulate(det, gt, active, state)
    metrics = summarize(precision, recall, gt["freq_groups"])
    return metrics, precision


def _load_dataset(lvis_gt):
    if isinstance(lvis_gt, dict):
        return lvis_gt
    if isinstance(lvis_gt, (str, os.PathLike)):
        with open(lvis_gt) as f:
            return json.load(f)
    if hasattr(lvis_gt, "dataset"):  # lvis.LVIS, without importing lvis for the check
        return lvis_gt.dataset
    raise TypeError(f"lvis_gt must be an lvis.LVIS, a json path or a dict, got {type(lvis_gt)}")


def _to_rle(segm, height, width):
    """lvis-api's ``ann_to_rle``: polygons and uncompressed RLE to compressed RLE."""
    if isinstance(segm, list):
        parts = mask_utils.frPyObjects(segm, height, width)
        # a single part needs no merge: pycocotools' rleMerge would return a copy of it
        return parts[0] if len(parts) == 1 else mask_utils.merge(parts)
    if isinstance(segm["counts"], list):
        return mask_utils.frPyObjects(segm, height, width)
    return segm


def _ground_truth(dataset, iou_type):
    images = {img["id"]: img for img in dataset["images"]}  # later duplicates win, as in LVIS
    cats = {cat["id"]: cat for cat in dataset["categories"]}
    image_ids, cat_ids = np.array(sorted(images), np.int64), np.array(sorted(cats), np.int64)
    num_cats = len(cat_ids)
    try:
        freq_groups = [[] for _ in FREQUENCIES]
        for k, cat_id in enumerate(cat_ids.tolist()):
            freq_groups[FREQUENCIES.index(cats[cat_id]["frequency"])].append(k)
    except (KeyError, ValueError) as e:
        raise ValueError(f"every category needs a frequency in {FREQUENCIES}: {e!r}") from None

    def keys(field):  # (image, category) pairs of a per-image category list, as group ids
        pairs = [(i, c) for i, img_id in enumerate(image_ids.tolist())
                 for c in images[img_id].get(field, [])]
        img, cat = np.array(pairs, np.int64).reshape(-1, 2).T
        cat_idx = np.searchsorted(cat_ids, cat).clip(0, max(num_cats - 1, 0))
        known = cat_ids[cat_idx] == cat if num_cats else np.zeros(len(cat), bool)
        return np.unique(img[known] * num_cats + cat_idx[known])

    # get_ann_ids' filter: known image and category, 0 < area < inf (False for NaN)
    anns = [a for a in dataset["annotations"] if a["image_id"] in images
            and a["category_id"] in cats and 0 < a["area"] < float("inf")]
    image = np.searchsorted(image_ids, np.array([a["image_id"] for a in anns], np.int64))
    cat = np.searchsorted(cat_ids, np.array([a["category_id"] for a in anns], np.int64))
    group = image * num_cats + cat
    order = np.argsort(group, kind="stable")  # ground truths of a group keep input order
    anns = [anns[i] for i in order.tolist()]
    area = np.array([a["area"] for a in anns], np.float64)
    ignore_flag = np.array([bool(a.get("ignore", 0)) for a in anns], bool)
    ignore = np.stack([ignore_flag | (area < lo) | (area > hi) for lo, hi in AREA_RANGES], 1)
    gt = dict(image_ids=image_ids, cat_ids=cat_ids, num_cats=num_cats, freq_groups=freq_groups,
              group=group[order], image=image[order], cat=cat[order], area=area, ignore=ignore,
              id=np.array([a["id"] for a in anns], np.int64), present=np.unique(group),
              negative=keys("neg_category_ids"), not_exhaustive=keys("not_exhaustive_category_ids"))
    # only masks need the image size (boxes do not, in lvis-api either)
    gt["hw"] = {img_id: (img.get("height"), img.get("width")) for img_id, img in images.items()}
    if iou_type == "bbox":
        gt["box"] = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
    elif lvis_fast_masks.AVAILABLE:
        gt["masks"] = ground_truth_masks([a["segmentation"] for a in anns],
                                         [gt["hw"][a["image_id"]] for a in anns], _to_rle,
                                         gt["id"])
    else:
        gt["rle"] = [_to_rle(a["segmentation"], *gt["hw"][a["image_id"]]) for a in anns]
    return gt


def _bad_input(problem, values):
    values = np.asarray(values)
    examples = ", ".join(repr(v) for v in values[:5].tolist())
    return ValueError(f"{len(values)} results have {problem}, e.g. {examples}")


def _detections(results, gt, iou_type, max_dets, use_mask_area):
    """Arrays of the detections lvis-api evaluates, sorted by (image, category, -score, input)."""
    given_area = hasattr(results, "dataset")  # lvis.LVISResults: capped, areas computed
    if given_area:
        results, max_dets = results.dataset["annotations"], -1
    elif isinstance(results, (str, os.PathLike)):
        with open(results) as f:
            results = json.load(f)
    columns = isinstance(results, Mapping)
    if columns:
        raw_image, raw_cat, score = _check_columns(results)
        n = len(score)
    else:
        n = len(results)
        try:
            raw_image = np.fromiter(map(itemgetter("image_id"), results), np.int64, n)
            raw_cat = np.fromiter(map(itemgetter("category_id"), results), np.int64, n)
            score = np.fromiter(map(itemgetter("score"), results), np.float64, n)
        except KeyError as e:
            raise ValueError(f"every result needs image_id, category_id and score; missing {e}"
                             ) from None
    image_ids, num_cats = gt["image_ids"], gt["num_cats"]
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
    del raw_image, raw_cat

    keep = np.arange(n)
    first = 0  # LVISResults decides box or mask areas from its first result after the cap
    rank, num_ranks = _score_rank(score)
    if max_dets >= 0 and n and np.bincount(image).max() > max_dets:
        by_image = _stable_order(image, rank, num_ranks)
        sorted_image = image[by_image]
        position = np.arange(n) - np.searchsorted(sorted_image, sorted_image)
        keep = np.sort(by_image[position < max_dets])
        if np.count_nonzero(image == image[0]) > max_dets:
            first = by_image[np.searchsorted(sorted_image, image[0])]
    if columns:
        box_area = n and not use_mask_area and "bbox" in results
    else:
        box_area = n and not given_area and not use_mask_area and "bbox" in results[first]
    need_box = iou_type == "bbox" or box_area
    need_rle = iou_type == "segm" or not (box_area or given_area)
    image, cat, rank = image[keep], cat[keep], rank[keep]
    group = image * num_cats + cat
    # federated filtering first: masks are converted and measured only where they can count
    # (boxes of every result are still read, for the NaN check)
    eligible = np.isin(group, gt["present"]) | np.isin(group, gt["negative"])
    rows = np.flatnonzero(eligible)  # masks: compressed RLEs of these rows only
    if columns:
        box, masks = _column_geometry(results, keep, image_ids[image], gt["hw"], need_box,
                                      need_rle, rows)
        sub = ()
    else:
        sub = results if len(keep) == n else [results[i] for i in keep.tolist()]
    if need_rle and not columns:
        hw = gt["hw"]
        try:
            masks = [_to_rle(r["segmentation"], *hw[r["image_id"]]) if "segmentation" in r
                     else _to_rle([_box_polygon(r["bbox"])], *hw[r["image_id"]])
                     for r in map(sub.__getitem__, rows.tolist())]
        except KeyError as e:
            raise ValueError(f"segm results need a segmentation (or bbox); missing {e}") from None
    if need_box and not columns:
        try:
            box = np.fromiter(itertools.chain.from_iterable(map(itemgetter("bbox"), sub)),
                              np.float64, 4 * len(sub)).reshape(-1, 4)
        except KeyError:
            if box_area:
                raise ValueError("some results lack a bbox while the first has one") from None
            # mask-only results get their mask's box, as in LVISResults (masks exist here)
            mask_of = dict(zip(rows.tolist(), masks))
            box = np.array([r["bbox"] if "bbox" in r else mask_utils.toBbox(mask_of[i])
                            if i in mask_of else _NO_BOX for i, r in enumerate(sub)],
                           np.float64).reshape(-1, 4)
    if need_box:
        if np.isnan(box).any():
            raise _bad_input("a NaN in bbox", np.flatnonzero(np.isnan(box).any(1)))
    if given_area:
        area = np.fromiter((r["area"] for r in sub), np.float64, len(sub))
    elif box_area:
        area = box[:, 2] * box[:, 3]
    if need_rle:
        mask_row = np.full(len(keep), -1, np.int64)
        mask_row[rows] = np.arange(len(rows))
        masks = _compressed_rles(masks, image_ids[image[rows]], gt["hw"])
    if not (given_area or box_area):  # 0 (dropped) where not eligible
        area = np.zeros(len(keep))
        if lvis_fast_masks.AVAILABLE:
            area[rows] = masks.area
        else:
            # pycocotools' area() overflows a uint8 count beyond 255 masks (numpy 2)
            area[rows] = np.concatenate([np.zeros(0)] + [mask_utils.area(masks[i:i + 255])
                                                         for i in range(0, len(masks), 255)])
    del sub

    evaluated = (area > 0) & (area < np.inf) & eligible
    order = np.flatnonzero(evaluated)
    order = order[_stable_order(group[order], rank[order], num_ranks)]
    det = dict(image=image[order], cat=cat[order], score_rank=rank[order], num_ranks=num_ranks,
               area=area[order], not_exhaustive=np.isin(group[order], gt["not_exhaustive"]))
    if iou_type == "bbox":
        det["box"] = box[order]
    elif lvis_fast_masks.AVAILABLE:
        det["masks"], det["mask_row"] = masks, mask_row[order]
    else:
        det["rle"] = [masks[i] for i in mask_row[order].tolist()]
    return det


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


def _column_geometry(columns, keep, image_id, hw, need_box, need_rle, rows):
    """(boxes, masks) of the rows keep of columnar results: boxes of all of them, compressed
    RLEs of keep[rows] only; None for what is not needed."""
    box = masks = None
    if "bbox" in columns:
        box = np.asarray(columns["bbox"], np.float64).reshape(-1, 4)[keep]
    if need_rle:
        segm = columns.get("segmentation")
        if isinstance(segm, RLEColumn):
            masks = segm.take(keep[rows])
        elif segm is not None:  # as given: made compressed RLEs by _compressed_rles if need be
            masks = list(map(segm.__getitem__, keep[rows].tolist()))
        elif box is None:  # no rows (_check_columns)
            masks = []
        else:  # boxes as masks, as LVISResults does for box-only results
            masks = [_to_rle([_box_polygon(b)], *hw[i])
                     for b, i in zip(box[rows].tolist(), image_id[rows].tolist())]
        if need_box and box is None:  # mask-only results get their mask's box, as LVISResults
            box = np.zeros((len(keep), 4))
            if len(masks):
                box[rows] = mask_utils.toBbox(_compressed_rles(masks, image_id[rows], hw, False))
    return box, masks


def _compressed_rles(masks, image_id, hw, parse=True):
    """masks as compressed RLE dicts or, with numba and parse, as :class:`ParsedMasks`."""
    if not isinstance(masks, RLEColumn) and compressed_counts(masks) is None:
        # polygons or uncompressed RLEs: convert with the image size
        masks = [_to_rle(m, *hw[i]) for m, i in zip(masks, image_id.tolist())]
    if parse and lvis_fast_masks.AVAILABLE:
        return ParsedMasks(masks if isinstance(masks, RLEColumn) else RLEColumn.from_rles(masks))
    return list(masks) if isinstance(masks, RLEColumn) else masks


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
