# Copyright (c) lt_d2 contributors.
"""IoU and greedy matching for :mod:`lt_d2.evaluation.lvis_fast`, batched over (image, category).

lvis-api matches one detection at a time in Python. Two facts make a batched version exact:

* a detection/ground-truth pair with IoU below the lowest threshold (0.5) can never match, so
  only the few "candidate" pairs at or above it are kept;
* within one (image, category) group the matching is sequential in score order, but groups are
  independent; so step ``s`` matches the ``s``-th detection (among those with a candidate) of
  every group at once, for all 4 area ranges x 10 IoU thresholds together.
"""
import numpy as np
import pycocotools.mask as mask_utils

# Exactly lvis-api's Params values: the threshold equality tests of the summary depend on them.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RANGES = [[0 ** 2, 1e5 ** 2], [0 ** 2, 32 ** 2], [32 ** 2, 96 ** 2], [96 ** 2, 1e5 ** 2]]
AREA_LABELS = ["all", "small", "medium", "large"]
MIN_IOU = min(IOU_THRESHOLDS[0], 1 - 1e-10)

# Matching states of a (detection, area range, threshold): lvis-api's dt_m != 0 is "matched to a
# ground truth whose id is not 0" (an id of 0 reads as unmatched there), dt_ig inherits the
# matched ground truth's ignore flag.
UNMATCHED, MATCHED, MATCHED_IGNORED, MATCHED_ID0, MATCHED_ID0_IGNORED = range(5)

_PRIORITY_BASE = 1 << 20  # > any count of ground truths in one (image, category)
_NO_CANDIDATE = 1 << 30


def ragged_arange(counts):
    """Concatenation of arange(c) for each c in counts."""
    starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)


def box_iou_rowwise(dt_boxes, gt_boxes):
    """IoU of dt_boxes[i] with gt_boxes[i], both [x, y, w, h].

    The operations and their order are those of pycocotools' ``bbIou`` so the doubles are
    bit-identical (tested), which matters for pairs that sit exactly on a threshold.
    """
    dx, dy, dw, dh = dt_boxes.T
    gx, gy, gw, gh = gt_boxes.T
    width = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    height = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = width * height
    union = dw * dh + gw * gh - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((width > 0) & (height > 0), inter / union, 0.0)


def box_candidate_pairs(det_boxes, det_gt_start, det_gt_count, gt_boxes, max_pairs=1 << 20):
    """(det, gt, iou) of the same-group pairs with iou >= MIN_IOU, computed max_pairs at a time."""
    pair_ends = np.cumsum(det_gt_count)
    found, first = [], 0
    while first < len(det_boxes):
        done = int(pair_ends[first - 1]) if first else 0
        stop = max(int(np.searchsorted(pair_ends, done + max_pairs, side="right")), first + 1)
        counts = det_gt_count[first:stop]
        det = np.repeat(np.arange(first, stop, dtype=np.int64), counts)
        gt = det_gt_start[det] + ragged_arange(counts)
        iou = box_iou_rowwise(det_boxes[det], gt_boxes[gt])
        keep = iou >= MIN_IOU
        found.append((det[keep], gt[keep], iou[keep]))
        first = stop
    return _concat_pairs(found)


def group_ranges(det_group, gt_group):
    """(det_lo, det_hi, gt_lo, gt_hi): the rows of each (image, category) group that has both
    detections and ground truth, among the detections and among the ground truths (both sorted
    by group id)."""
    groups = np.intersect1d(det_group, gt_group)
    return (np.searchsorted(det_group, groups), np.searchsorted(det_group, groups, "right"),
            np.searchsorted(gt_group, groups), np.searchsorted(gt_group, groups, "right"))


def mask_candidate_pairs(det_rles, det_group, gt_rles, gt_group):
    """Same as box_candidate_pairs for RLE masks: pycocotools' IoU, one call per (image,
    category) group. Per group rather than per image: the masks are parsed as often, and the
    products of masks of different categories (never candidates) are not computed.

    det_group, gt_group: the group id of each detection and ground truth, both sorted.
    """
    found = []
    for d0, d1, g0, g1 in zip(*(r.tolist() for r in group_ranges(det_group, gt_group))):
        iou = np.asarray(mask_utils.iou(det_rles[d0:d1], gt_rles[g0:g1], [0] * (g1 - g0)))
        det, gt = np.nonzero(iou >= MIN_IOU)
        found.append((det + d0, gt + g0, iou[det, gt]))
    return _concat_pairs(found)


def _concat_pairs(found):
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return tuple(np.concatenate([f[i] for f in found]) for i in range(3))


def greedy_match(pair_det, pair_gt, pair_iou, det_group, gt_ignore, gt_id_is_zero):
    """lvis-api's ``evaluate_img`` matching, for all groups, area ranges and thresholds.

    Detections must be indexed in (group, score descending, input order) order, ground truths in
    (group, input order) order. gt_ignore: [num_gt, num_areas] bool. A detection takes, among
    the still unmatched ground truths with IoU >= threshold, a not ignored one before an ignored
    one, then the highest IoU, then the last in input order (lvis-api's ``<`` keeps later ties).

    Returns (dets that have a candidate, sorted; their state [num, areas * thresholds] int8,
    column = area * num_thresholds + threshold).
    """
    num_thr = len(IOU_THRESHOLDS)
    num_cols = gt_ignore.shape[1] * num_thr
    order = np.lexsort((-pair_gt, -pair_iou, pair_det))
    pair_gt, pair_iou = pair_gt[order], pair_iou[order]
    active, seg_start, seg_len = np.unique(pair_det[order], return_index=True, return_counts=True)
    state = np.zeros((len(active), num_cols), np.int8)
    if len(active) == 0:
        return active, state
    group = det_group[active]
    starts_group = np.r_[True, group[1:] != group[:-1]]
    position = np.arange(len(active))
    step = position - np.maximum.accumulate(np.where(starts_group, position, 0))
    by_step = np.argsort(step, kind="stable")
    step_bounds = np.searchsorted(step[by_step], np.arange(step.max() + 2))

    thresholds = np.tile(np.minimum(IOU_THRESHOLDS, 1 - 1e-10), gt_ignore.shape[1])
    ignore_cols = np.repeat(gt_ignore, num_thr, axis=1)
    matched = np.zeros((len(gt_ignore), num_cols), bool)
    for lo, hi in zip(step_bounds[:-1].tolist(), step_bounds[1:].tolist()):
        sel = by_step[lo:hi]
        starts, lens = seg_start[sel], seg_len[sel]
        local = ragged_arange(lens)
        pairs = np.repeat(starts, lens) + local
        gts = pair_gt[pairs]
        valid = (pair_iou[pairs, None] >= thresholds) & ~matched[gts]
        priority = np.where(valid, local[:, None] + ignore_cols[gts] * _PRIORITY_BASE,
                            _NO_CANDIDATE)
        best = np.minimum.reduceat(priority, np.cumsum(lens) - lens, axis=0)
        row, col = np.nonzero(best < _NO_CANDIDATE)
        chosen = pair_gt[starts[row] + best[row, col] % _PRIORITY_BASE]
        matched[chosen, col] = True
        state[sel[row], col] = (MATCHED + ignore_cols[chosen, col]
                                + (MATCHED_ID0 - MATCHED) * gt_id_is_zero[chosen])
    return active, state
