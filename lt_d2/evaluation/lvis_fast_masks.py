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
import itertools
from operator import itemgetter

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - exercised by the fallback test with AVAILABLE=False
    numba = None

AVAILABLE = numba is not None

# The lowest IoU threshold is exactly 0.5 (lvis_fast_match.MIN_IOU): "IoU < 0.5" is "2 i < u".
_UINT32 = 0xFFFFFFFF


def _jit(func=None, parallel=False):
    if func is None:
        return lambda f: _jit(f, parallel)
    return numba.njit(cache=True, nogil=True, parallel=parallel)(func) if AVAILABLE else func


_range = numba.prange if AVAILABLE else range


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


@_jit(parallel=True)
def _measure(buf, string_start, heights):
    """Area (pycocotools' rleArea) and pixel extent [x0, y0, x1, y1] of every mask.

    One streaming pass that keeps no counts: only the few masks that can reach IoU 0.5 with a
    ground truth are decoded again, by _candidates. The extent is the smallest box around the
    foreground runs, whole image height for a run that wraps into the next column.
    """
    n = len(string_start) - 1
    area = np.zeros(n, np.int64)
    extent = np.zeros((n, 4), np.int64)
    extent[:, 2:] = -1  # empty masks: x1 < x0, y1 < y0, no pixel to meet
    for i in _range(n):  # the masks are independent: spread over the cores
        p, end, h = string_start[i], string_start[i + 1], heights[i]
        m, before_last, last, position, total = 0, 0, 0, 0, 0
        first_on, last_on, y0, y1 = -1, -1, h, -1
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
            if m & 1 and x > 0:
                total += x
                if first_on < 0:
                    first_on = position
                last_on = position + x - 1
                top, bottom = position % h, last_on % h
                if bottom < top or x >= h:
                    y0, y1 = 0, h - 1
                else:
                    y0, y1 = min(y0, top), max(y1, bottom)
            position += x
            m += 1
        area[i] = total & _UINT32
        if first_on >= 0:
            extent[i, 0], extent[i, 1] = first_on // h, y0
            extent[i, 2], extent[i, 3] = last_on // h, y1
    return area, extent


@_jit
def _decode_all(buf, string_start):
    counts = np.empty(len(buf), np.int64)  # a count takes at least one character
    count_start = np.zeros(len(string_start), np.int64)
    for i in range(len(string_start) - 1):
        m = _decode(buf, string_start[i], string_start[i + 1], counts[count_start[i]:])
        count_start[i + 1] = count_start[i] + m
    return counts[:count_start[-1]], count_start


@_jit
def _intersection_union(counts_a, counts_b):
    """pycocotools' rleIou merge for one pair: (intersection, union) in uint32 arithmetic."""
    ka, kb = len(counts_a), len(counts_b)
    ca, cb = counts_a[0], counts_b[0]
    a, b, va, vb = 1, 1, False, False
    inter, union, ct = 0, 0, 1
    while ct > 0:
        c = min(ca, cb)
        if va or vb:
            union += c
            if va and vb:
                inter += c
        ct = 0
        ca -= c
        if ca == 0 and a < ka:
            ca = counts_a[a]
            a += 1
            va = not va
        ct += ca
        cb -= c
        if cb == 0 and b < kb:
            cb = counts_b[b]
            b += 1
            vb = not vb
        ct += cb
    return inter & _UINT32, union & _UINT32


@_jit
def _candidates(det_buf, det_string_start, det_area, det_extent, det_hw, det_rows,
                gt_buf, gt_string_start, gt_area, gt_extent, gt_hw,
                det_lo, det_hi, gt_lo, gt_hi, max_pairs):
    gt_counts, gt_start = _decode_all(gt_buf, gt_string_start)
    longest = np.max(np.diff(det_string_start)) if len(det_string_start) > 1 else 0
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
                w = min(det_extent[d, 2], gt_extent[g, 2]) - max(det_extent[d, 0], gt_extent[g, 0]) + 1
                h = min(det_extent[d, 3], gt_extent[g, 3]) - max(det_extent[d, 1], gt_extent[g, 1]) + 1
                if w <= 0 or h <= 0 or 2 * w * h < larger:
                    continue
                if det_hw[d, 0] != gt_hw[g, 0] or det_hw[d, 1] != gt_hw[g, 1]:
                    continue  # pycocotools: IoU -1
                if num_counts < 0:
                    num_counts = _decode(det_buf, det_string_start[d], det_string_start[d + 1],
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
    """Compressed RLE masks as one byte buffer, with their areas, pixel extents and sizes."""

    def __init__(self, counts, hw):
        """counts: list of compressed RLE strings (str or bytes, as in ``rle["counts"]``);
        hw: (N, 2) ints, the masks' own [height, width] (``rle["size"]``)."""
        self.hw = np.asarray(hw, np.int64).reshape(-1, 2)
        if len(counts) != len(self.hw):
            raise ValueError(f"{len(counts)} RLE strings but {len(self.hw)} sizes")
        if not set(map(type, counts)) - {str}:
            buf = "".join(counts).encode("ascii")
        else:
            buf = b"".join(c.encode("ascii") if isinstance(c, str) else bytes(c) for c in counts)
        self.buf = np.frombuffer(buf, np.uint8)
        self.string_start = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(np.fromiter(map(len, counts), np.int64, len(counts)),
                  out=self.string_start[1:])
        heights = np.maximum(self.hw[:, 0], 1)  # an empty image has no pixels to place
        self.area, self.extent = _measure(self.buf, self.string_start, heights)

    def __len__(self):
        return len(self.area)

    @classmethod
    def from_rles(cls, rles, counts=None):
        """From pycocotools compressed RLE dicts ({"size": [h, w], "counts": str or bytes});
        counts: their compressed_counts(rles), when known."""
        if counts is None:
            counts = compressed_counts(rles)
            if counts is None:
                raise ValueError("ParsedMasks needs compressed RLEs (str or bytes counts); "
                                 "convert polygons and uncompressed RLEs with frPyObjects")
        sizes = itertools.chain.from_iterable(map(itemgetter("size"), rles))
        return cls(counts, np.fromiter(sizes, np.int64, 2 * len(rles)))


def compressed_counts(segms):
    """The "counts" of each segmentation if all are compressed RLE dicts, else None."""
    try:  # a polygon list raises TypeError; an uncompressed RLE has list counts
        counts = list(map(itemgetter("counts"), segms))
    except (KeyError, TypeError):
        return None
    return counts if not set(map(type, counts)) - {str, bytes} else None


def mask_candidate_pairs(det_masks, det_rows, det_group, gt_masks, gt_group):
    """(det, gt, iou) of the pairs of the same group with IoU >= 0.5, as pycocotools computes it.

    Detection i is mask det_rows[i] of det_masks, ground truth j is mask j of gt_masks (both
    :class:`ParsedMasks`); det_group, gt_group: their (image, category) group ids, both sorted.
    """
    groups = np.intersect1d(det_group, gt_group)
    det_lo, det_hi = np.searchsorted(det_group, groups), np.searchsorted(det_group, groups, "right")
    gt_lo, gt_hi = np.searchsorted(gt_group, groups), np.searchsorted(gt_group, groups, "right")
    max_pairs = int(np.sum((det_hi - det_lo) * (gt_hi - gt_lo)))
    det, gt = det_masks, gt_masks
    return _candidates(det.buf, det.string_start, det.area, det.extent, det.hw,
                       np.asarray(det_rows, np.int64), gt.buf, gt.string_start, gt.area,
                       gt.extent, gt.hw, det_lo, det_hi, gt_lo, gt_hi, max_pairs)
