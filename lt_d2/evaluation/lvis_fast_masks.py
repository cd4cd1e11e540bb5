# Copyright (c) lt_d2 contributors.
"""Mask areas and mask IoU candidates for :mod:`lt_d2.evaluation.lvis_fast`, compiled by numba.

lvis-api (and the NumPy path of lvis_fast) hands each (image, category) group to pycocotools,
which parses every compressed RLE string again for each call (area, then IoU) and spends about
a microsecond of Python per mask and call: on LVIS-sized mask results that overhead, not the
arithmetic, is most of the evaluation. Here every string is parsed once, in one compiled pass
over all of them, and the IoU of a pair is computed only when it can reach the lowest threshold.

The arithmetic is pycocotools' (maskApi.c): the same string decoding (``rleFrString``, counts
kept as uint32), areas as the sum of the foreground runs (``rleArea``), intersection and union as
uint32 pixel counts and IoU as their double quotient (``rleIou``, union 1 when they do not
meet, -1 for masks of different sizes), so each IoU is bit-identical. The pairs skipped without
computing their IoU are those where IoU <= min(area) / max(area) or IoU <= (intersection of the
masks' pixel extents) / max(area) proves IoU < 0.5, all in integers.

numba is an install requirement; where it cannot be imported, :data:`AVAILABLE` is False and
lvis_fast falls back to pycocotools.
"""
import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - exercised by the fallback test with AVAILABLE=False
    numba = None

from .lvis_fast_match import group_ranges
from .rle_column import RLEColumn

AVAILABLE = numba is not None

# The lowest IoU threshold is exactly 0.5 (lvis_fast_match.MIN_IOU): "IoU < 0.5" is "2 i < u".
_UINT32 = 0xFFFFFFFF


def _jit(func):
    # serial on purpose: numba's parallel loops start an OpenMP thread pool, and detectron2 forks
    # data-loader workers after an evaluation during training (GNU OpenMP is not fork-safe)
    return numba.njit(cache=True, nogil=True)(func) if AVAILABLE else func


@_jit
def _decode(buf, start, end, out):
    """pycocotools' rleFrString: the counts of buf[start:end] into out; returns how many."""
    m = 0
    while start < end:
        x, k, more = 0, 0, True
        while more:
            c = np.int64(buf[start]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = (c & 0x20) != 0
            start += 1
            k += 1
            if not more and (c & 0x10) != 0:
                x |= np.int64(-1) << (5 * k)
        if m > 2:
            x += out[m - 2]
        out[m] = x & _UINT32
        m += 1
    return m


@_jit
def _add_run(m, j, count, h):
    """Fold the j-th count of a mask into its measures m = (area, x0, x1, y0, y1, column, row):
    the area as pycocotools' rleArea, the pixel extent as the smallest box around the
    foreground runs (whole image height for a run that wraps into the next column), and the
    (column, row) the next run starts at, divided out only when a run reaches the next column."""
    area, x0, x1, y0, y1, column, row = m
    end = row + count
    if j % 2 == 1 and count > 0:
        area += count
        if x0 < 0:
            x0 = column
        if end <= h:  # ends in its column
            x1, y0, y1 = column, min(y0, row), max(y1, end - 1)
        else:
            x1, y0, y1 = column + (end - 1) // h, 0, h - 1
    if end >= h:
        column, end = column + end // h, end % h
    return area, x0, x1, y0, y1, column, end


@_jit
def _store(m, i, area, extent):
    area[i] = m[0] & _UINT32
    if m[1] >= 0:
        extent[i, 0], extent[i, 1], extent[i, 2], extent[i, 3] = m[1], m[3], m[2], m[4]


def _empty_measures(n):
    extent = np.zeros((n, 4), np.int64)
    extent[:, 2:] = -1  # empty masks: x1 < x0, y1 < y0, no pixel to meet
    return np.zeros(n, np.int64), extent


@_jit
def _measure(buf, string_start, string_end, heights, area, extent):
    """Area and pixel extent (see _add_run) of every compressed string.

    One streaming pass that keeps no counts: only the few masks that can reach IoU 0.5 with a
    ground truth are decoded again, by _candidates.
    """
    for i in range(len(string_start)):
        p, end, h = string_start[i], string_end[i], heights[i]
        measures = (0, -1, -1, h, -1, 0, 0)
        m, before_last, last = 0, 0, 0
        while p < end:
            c = np.int64(buf[p]) - 48
            p += 1
            x = c & 0x1F
            if c & 0x20:  # numbers of more than one character are rare: kept out of line
                k = 1
                while True:
                    c = np.int64(buf[p]) - 48
                    p += 1
                    x |= (c & 0x1F) << (5 * k)
                    k += 1
                    if not c & 0x20:
                        break
                if c & 0x10:
                    x |= np.int64(-1) << (5 * k)
            elif c & 0x10:
                x |= np.int64(-32)
            if m > 2:
                x += before_last
            x &= _UINT32
            before_last, last = last, x
            measures = _add_run(measures, m, x, h)
            m += 1
        _store(measures, i, area, extent)


@_jit
def _measure_counts(counts, count_start, heights, area, extent):
    for i in range(len(count_start) - 1):
        h = heights[i]
        measures = (0, -1, -1, h, -1, 0, 0)
        for j in range(count_start[i + 1] - count_start[i]):
            measures = _add_run(measures, j, counts[count_start[i] + j], h)
        _store(measures, i, area, extent)


@_jit
def _decode_all(buf, string_start, string_end):
    # a count takes at least one character
    counts = np.empty(np.sum(string_end - string_start), np.int64)
    count_start = np.zeros(len(string_start) + 1, np.int64)
    for i in range(len(string_start)):
        m = _decode(buf, string_start[i], string_end[i], counts[count_start[i]:])
        count_start[i + 1] = count_start[i] + m
    return counts[:count_start[-1]], count_start


@_jit
def _intersection_union(counts_a, counts_b):
    """pycocotools' rleIou merge for one pair: (intersection, union) in uint32 arithmetic."""
    ca, cb = counts_a[0], counts_b[0]
    a, b, va, vb = 1, 1, False, False
    inter, union, ct = 0, 0, 1
    while ct > 0:
        c = min(ca, cb)
        if va or vb:
            union += c
            if va and vb:
                inter += c
        ca, a, va = _advance(counts_a, ca - c, a, va)
        cb, b, vb = _advance(counts_b, cb - c, b, vb)
        ct = ca + cb
    return inter & _UINT32, union & _UINT32


@_jit
def _advance(counts, left, index, on):
    """One mask's step in pycocotools' two-mask run walks (rleIou, rleMerge): when its current
    run is used up, the next run starts and the mask switches between off and on."""
    if left == 0 and index < len(counts):
        return counts[index], index + 1, not on
    return left, index, on


@_jit
def _candidates(det_buf, det_string_start, det_string_end, det_area, det_extent, det_hw,
                det_rows,
                gt_counts, gt_start, gt_area, gt_extent, gt_hw,
                det_lo, det_hi, gt_lo, gt_hi, max_pairs):
    longest = np.max(det_string_end - det_string_start) if len(det_string_start) else 0
    det_counts = np.empty(longest, np.int64)
    out_det = np.empty(max_pairs, np.int64)
    out_gt = np.empty(max_pairs, np.int64)
    out_iou = np.empty(max_pairs, np.float64)
    found = 0
    for group in range(len(det_lo)):
        for det in range(det_lo[group], det_hi[group]):
            d = det_rows[det]
            ad, num_counts = det_area[d], -1
            for g in range(gt_lo[group], gt_hi[group]):
                ag = gt_area[g]
                larger = max(ad, ag)
                if 2 * min(ad, ag) < larger:
                    continue
                de, ge = det_extent[d], gt_extent[g]
                w = min(de[2], ge[2]) - max(de[0], ge[0]) + 1
                h = min(de[3], ge[3]) - max(de[1], ge[1]) + 1
                if w <= 0 or h <= 0 or 2 * w * h < larger:
                    continue
                if det_hw[d, 0] != gt_hw[g, 0] or det_hw[d, 1] != gt_hw[g, 1]:
                    continue  # pycocotools: IoU -1
                if num_counts < 0:
                    num_counts = _decode(det_buf, det_string_start[d], det_string_end[d],
                                         det_counts)
                inter, union = _intersection_union(det_counts[:num_counts],
                                                   gt_counts[gt_start[g]:gt_start[g + 1]])
                if inter == 0:
                    continue
                iou = np.float64(inter) / np.float64(union)
                if iou >= 0.5:
                    out_det[found], out_gt[found], out_iou[found] = det, g, iou
                    found += 1
    return out_det[:found], out_gt[:found], out_iou[:found]


class ParsedMasks:
    """An :class:`RLEColumn` with the area and pixel extent of each mask."""

    def __init__(self, column):
        self.buf, self.start, self.end, self.hw = column.buf, column.start, column.end, column.hw
        self.area, self.extent = _empty_measures(len(column))
        # an empty image has no pixels to place: any height > 0 does
        _measure(self.buf, self.start, self.end, np.maximum(self.hw[:, 0], 1), self.area,
                 self.extent)

    def __len__(self):
        return len(self.area)

    def decoded(self):
        """The same masks as :class:`DecodedMasks`."""
        counts, count_start = _decode_all(self.buf, self.start, self.end)
        return DecodedMasks(counts, count_start, self.hw)

    @classmethod
    def from_rles(cls, rles):
        """From pycocotools compressed RLE dicts ({"size": [h, w], "counts": str or bytes})."""
        return cls(RLEColumn.from_rles(rles))


class DecodedMasks:
    """Masks as their uncompressed counts (all concatenated), with areas, extents and sizes."""

    def __init__(self, counts, count_start, hw):
        self.counts, self.count_start = counts, count_start
        self.hw = np.asarray(hw, np.int64).reshape(-1, 2)
        self.area, self.extent = _empty_measures(len(self.hw))
        _measure_counts(counts, count_start, np.maximum(self.hw[:, 0], 1), self.area,
                        self.extent)

    def __len__(self):
        return len(self.area)


def mask_candidate_pairs(det_masks, det_rows, det_group, gt_masks, gt_group):
    """(det, gt, iou) of the pairs of the same group with IoU >= 0.5, as pycocotools computes it.

    Detection i is mask det_rows[i] of det_masks (:class:`ParsedMasks`), ground truth j is mask j
    of gt_masks (:class:`DecodedMasks`); det_group, gt_group: their (image, category) group ids,
    both sorted.
    """
    det_lo, det_hi, gt_lo, gt_hi = group_ranges(det_group, gt_group)
    max_pairs = int(np.sum((det_hi - det_lo) * (gt_hi - gt_lo)))
    det, gt = det_masks, gt_masks
    return _candidates(det.buf, det.start, det.end, det.area, det.extent, det.hw,
                       np.asarray(det_rows, np.int64), gt.counts, gt.count_start, gt.area,
                       gt.extent, gt.hw, det_lo, det_hi, gt_lo, gt_hi, max_pairs)
