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
an :class:`RLEColumn`, ~0.3 s against ~20 s (~65x). The detections' side (cap, federated
filtering, areas, input formats) is :mod:`.lvis_fast_results`.
"""
import json
import os

import numpy as np

from ..grouping import LVIS_FREQUENCIES
from . import lvis_fast_masks
from .lvis_fast_accumulate import accumulate, lvis_summary
from .lvis_fast_match import AREA_RANGES, box_candidate_pairs, greedy_match, mask_candidate_pairs
from .lvis_fast_polygons import ground_truth_masks
from .lvis_fast_results import columnar_results, detections, result_dicts, to_rle

__all__ = ["evaluate_lvis", "columnar_results", "result_dicts"]


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
    det = detections(results, gt, iou_type, max_dets, use_mask_area)
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
            [det["rle"][i] for i in with_gt.tolist()], det_group[with_gt], gt["rle"], gt["group"])
        pairs = with_gt[pair_det], pair_gt, pair_iou
    active, state = greedy_match(*pairs, det_group, gt["ignore"], gt["id"] == 0)
    precision, recall = accumulate(det, gt, active, state)
    metrics = lvis_summary(precision, recall, gt["freq_groups"])
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


def _ground_truth(dataset, iou_type):
    images = {img["id"]: img for img in dataset["images"]}  # later duplicates win, as in LVIS
    cats = {cat["id"]: cat for cat in dataset["categories"]}
    image_ids, cat_ids = np.array(sorted(images), np.int64), np.array(sorted(cats), np.int64)
    num_cats = len(cat_ids)
    try:
        freq_groups = [[] for _ in LVIS_FREQUENCIES]
        for k, cat_id in enumerate(cat_ids.tolist()):
            freq_groups[LVIS_FREQUENCIES.index(cats[cat_id]["frequency"])].append(k)
    except (KeyError, ValueError) as e:
        raise ValueError(f"every category needs a frequency in {LVIS_FREQUENCIES}: {e!r}") from None

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
                                         [gt["hw"][a["image_id"]] for a in anns], to_rle,
                                         gt["id"])
    else:
        gt["rle"] = [to_rle(a["segmentation"], *gt["hw"][a["image_id"]]) for a in anns]
    return gt
