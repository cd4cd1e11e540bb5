# Copyright (c) lt_d2 contributors.
"""``LVISEval.accumulate`` and ``summarize`` (:func:`lvis_summary`) for :mod:`.lvis_fast`, all
categories at once.

A loop over LVIS's 1,203 categories costs more than their arithmetic, so every category and
every column (area range x IoU threshold) is processed in one pass. Three facts keep the result
bit-identical to lvis-api's per-category curves:

* a precision curve rises only at true positives: a false positive lowers it and an ignored
  detection leaves it as it is (rounding is monotonic). So lvis-api's "maximum precision to the
  right" of a point is the maximum over the true positives from there on, and its value at
  recall threshold r is that maximum at the first true positive whose recall reaches r. Only
  the true positives (a few per cent of detections x columns) are ever divided;
* the false positives before a true positive are the detections inside the area range so far
  minus those matched or ignored by their match; only detections that have a match candidate
  can be the latter, so the per-column running counts are taken over those alone;
* each (column, category) run of true positives needs its own reverse running maximum. An
  offset added to keep runs apart would round the precisions; runs padded with -inf to the next
  power of two length and stacked as rows take the exact maxima at < 2x the work, in a handful
  of numpy calls.
"""
from collections import OrderedDict

import numpy as np

from ..grouping import LVIS_FREQUENCIES
from .lvis_fast_match import (
    AREA_LABELS,
    AREA_RANGES,
    IOU_THRESHOLDS,
    MATCHED,
    MATCHED_ID0_IGNORED,
    MATCHED_IGNORED,
    RECALL_THRESHOLDS,
)
from .means import lvis_mean

_AREA_LO, _AREA_HI = np.array(AREA_RANGES, np.float64).T


def accumulate(det, gt, active, state):
    """``LVISEval.accumulate``: (precision [T, R, K, A], recall [T, K, A]), -1 where no gt.

    det, gt: the arrays of :mod:`.lvis_fast`; active, state: :func:`.greedy_match`'s answer,
    whose columns are area * T + threshold.
    """
    num_thr, num_areas, num_cats = len(IOU_THRESHOLDS), len(AREA_RANGES), gt["num_cats"]
    num_gt = np.stack([np.bincount(gt["cat"][~gt["ignore"][:, a]], minlength=num_cats)
                       for a in range(num_areas)], 1)
    cat, with_state, col_state, inside_count, not_fp_count, start_count = _running_counts(
        det, num_cats, active, state)

    # true positives, in (column, category, score order) order: runs of one (column, category)
    column, j = np.divmod(np.flatnonzero(col_state == MATCHED), len(with_state))
    pos = with_state[j]
    k, a, t = cat[pos], column // num_thr, column % num_thr
    run = column * num_cats + k
    run_first = np.flatnonzero(np.diff(run, prepend=-1))
    run_len = np.diff(np.r_[run_first, len(run)])
    # the i-th true positive of a run has tp = i; lvis-api's float64 counts, same divisions
    tp = (np.arange(len(run)) - np.repeat(run_first, run_len) + 1).astype(np.float64)
    fp = inside_count[a, pos + 1] - not_fp_count[column, j + 1] - start_count[column, k]
    fp = fp.astype(np.float64)
    best = _reverse_running_max(tp / (fp + tp + np.spacing(1)), run_first, run_len)
    precision = _precision_curves(best, tp / num_gt[k, a], (t, k, a), run_first, run_len, num_gt)

    tp_total = np.zeros((num_areas, num_thr, num_cats))
    tp_total[a[run_first], t[run_first], k[run_first]] = run_len
    recall = np.where(num_gt > 0, tp_total.transpose(1, 2, 0) / np.maximum(num_gt, 1), -1.0)
    return precision, recall


def _running_counts(det, num_cats, active, state):
    """The detections in lvis-api's order and running counts over them, from which the false
    positives before any detection follow: (category of each, positions that have a match
    state, their state per column [columns, with_state], detections inside each area range
    [A, dets + 1] and not false positives per column [columns, with_state + 1] so far, and
    both counts before each category's first detection [columns, K])."""
    num_thr, num_areas = len(IOU_THRESHOLDS), len(AREA_RANGES)
    # det is sorted by (image, category, score rank, input order), so a stable sort on
    # (category, score rank) gives lvis-api's order: score ties go to the lower image id, then
    # to the input order
    order = np.argsort(det["cat"] * det["num_ranks"] + det["score_rank"], kind="stable")
    cat = det["cat"][order]
    cat_start = np.searchsorted(cat, np.arange(num_cats))
    area = det["area"][order]
    inside = ~((area < _AREA_LO[:, None]) | (area > _AREA_HI[:, None])
               | det["not_exhaustive"][order])  # [A, dets]
    inside_count = np.zeros((num_areas, len(cat) + 1), np.int64)
    np.cumsum(inside, 1, out=inside_count[:, 1:])

    state_row = np.full(len(det["cat"]), -1, np.int64)
    state_row[active] = np.arange(len(active))
    state_row = state_row[order]
    with_state = np.flatnonzero(state_row >= 0)  # positions in `order`
    col_state = np.ascontiguousarray(state[state_row[with_state]].T)  # [columns, with_state]
    not_fp = ((col_state == MATCHED) | (col_state == MATCHED_IGNORED)
              | (col_state == MATCHED_ID0_IGNORED))
    not_fp_by_area = not_fp.reshape(num_areas, num_thr, -1)
    not_fp_by_area &= inside[:, None, with_state]
    not_fp_count = np.zeros((num_areas * num_thr, len(with_state) + 1), np.int32)
    np.cumsum(not_fp, 1, dtype=np.int32, out=not_fp_count[:, 1:])
    # both counts before each category's first detection, per column: the counts are running
    # sums over all categories, so these are subtracted to restart them at each category
    start_count = (np.repeat(inside_count[:, cat_start], num_thr, 0)
                   - not_fp_count[:, np.searchsorted(with_state, cat_start)])
    return cat, with_state, col_state, inside_count, not_fp_count, start_count


def _precision_curves(best, recall, tka, run_first, run_len, num_gt):
    """precision [T, R, K, A] from each true positive's interpolated precision ``best`` and
    ``recall``, at (t, k, a) = ``tka``, in runs of one (threshold, area, category)."""
    num_thr, num_rec, num_areas = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(AREA_RANGES)
    num_cats = num_gt.shape[0]
    t, k, a = tka
    # the recall thresholds a true positive is the first to reach: [lo, hi)
    hi = np.searchsorted(RECALL_THRESHOLDS, recall, side="right")
    lo = np.r_[0, hi[:-1]]
    lo[run_first] = 0
    # Along r a curve is a falling staircase (best falls along a run), then 0s where recall stops
    # short, or -1 without gt: its value where each step starts and a running minimum over r
    # fill it. Writing each of its elements, K * A apart in memory, was ~3x slower.
    precision = np.empty((num_thr, num_rec, num_cats, num_areas))
    precision[:, 0] = np.where(num_gt > 0, 0.0, -1.0)
    precision[:, 1:] = np.inf
    r_stride = num_cats * num_areas
    at_r0 = t * (num_rec * r_stride) + k * num_areas + a  # flat index of (t, 0, k, a)
    step = np.flatnonzero(hi > lo)
    precision.ravel()[at_r0[step] + lo[step] * r_stride] = best[step]
    run_last = run_first + run_len - 1
    end = run_last[hi[run_last] < num_rec]
    precision.ravel()[at_r0[end] + hi[end] * r_stride] = 0.0
    for r in range(1, num_rec):
        np.minimum(precision[:, r - 1], precision[:, r], out=precision[:, r])
    return precision


def _reverse_running_max(values, run_first, run_len):
    """np.maximum.accumulate(run[::-1])[::-1] of every run, runs grouped by padded length."""
    out = np.empty_like(values)
    width_exp = np.frexp(run_len - 1)[1]  # 2 ** width_exp >= run_len
    for exp in np.unique(width_exp).tolist():
        runs = np.flatnonzero(width_exp == exp)
        offsets = np.arange(1 << exp)
        idx = run_first[runs, None] + offsets
        used = offsets < run_len[runs, None]
        block = np.full(idx.shape, -np.inf)
        block[used] = values[idx[used]]
        out[idx[used]] = np.maximum.accumulate(block[:, ::-1], 1)[:, ::-1][used]
    return out


def lvis_summary(precision, recall, freq_groups):
    """``LVISEval.summarize``. Each mean is np.mean of the same elements in the same order as
    lvis-api's ``s[s > -1]`` (:func:`.means.lvis_mean`); what differs is how they are gathered:
    the "all" area range is copied once, contiguous, and the thresholds and frequency groups are
    taken from that copy."""
    area_all = np.ascontiguousarray(precision[..., 0])  # [T, R, K]
    metrics = OrderedDict(AP=lvis_mean(area_all))
    for name, iou_thr in (("AP50", 0.50), ("AP75", 0.75)):
        metrics[name] = lvis_mean(area_all[iou_thr == IOU_THRESHOLDS])
    for a, area in enumerate(AREA_LABELS[1:], 1):
        metrics["AP" + area[0]] = lvis_mean(precision[..., a])
    for group, freq in zip(freq_groups, LVIS_FREQUENCIES):
        metrics["AP" + freq] = lvis_mean(np.take(area_all, group, axis=2))
    for a, area in enumerate(AREA_LABELS):
        metrics["AR@300" if a == 0 else f"AR{area[0]}@300"] = lvis_mean(recall[:, :, a])
    return metrics
