# Copyright (c) lt_d2 contributors.
"""Ground-truth polygons to masks for :mod:`lt_d2.evaluation.lvis_fast`, compiled by numba.

lvis-api rasterises every ground-truth polygon with pycocotools (``frPyObjects`` then ``merge``
of the parts); on LVIS-sized data that is ~10 us of Python and C per annotation, more than the
rest of a mask evaluation together. This is the same algorithm (maskApi.c's ``rleFrPoly``: five
times upsampled boundary, y-boundary points, sorted run starts; ``rleMerge`` for the union of
the parts) in one compiled loop, giving the same run-length counts, with the C integer
conversions kept (truncation toward zero). Non-finite coordinates, on which pycocotools'
conversions are undefined, are refused.

Annotations that pycocotools would not read as a list of polygons (RLE dicts, or a first part
of exactly 4 numbers, which ``frPyObjects`` takes for boxes) go through pycocotools.
"""
import itertools

import numpy as np

from .lvis_fast_masks import AVAILABLE, DecodedMasks, ParsedMasks, _advance, _jit

_SCALE = 5.0


@_jit
def _upsampled_corners(xy):
    """The polygon's corners on the 5x grid, closed (first corner repeated), as C ints."""
    k = len(xy) // 2
    x = np.empty(k + 1, np.int64)
    y = np.empty(k + 1, np.int64)
    for j in range(k):
        x[j] = np.int64(_SCALE * xy[2 * j] + 0.5)  # C (int): toward zero
        y[j] = np.int64(_SCALE * xy[2 * j + 1] + 0.5)
    if k:
        x[k], y[k] = x[0], y[0]
    return x, y


@_jit
def _boundary_points(x, y):
    """How many points rleFrPoly draws along the upsampled boundary."""
    m = 0
    for j in range(len(x) - 1):
        m += max(abs(x[j] - x[j + 1]), abs(y[j] - y[j + 1])) + 1
    return m


@_jit
def _y_start(v, h):
    """The run start row rleFrPoly takes for the upsampled boundary row v."""
    yd = (np.float64(v) + 0.5) / _SCALE - 0.5
    return np.int64(np.ceil(min(max(yd, 0.0), np.float64(h))))


@_jit
def _first_step_past(xs, s, dy, centre):
    """The first t in [1, dy] where column u(t) = (int)(xs + s t + .5) leaves centre for its
    neighbour (centre + 1 if s > 0, centre - ... as u falls if s < 0): estimated in real
    numbers, then settled with the same double arithmetic as rleFrPoly, which is monotonic."""
    limit = np.float64(centre + 1)  # centre >= 2: C's truncation is a floor here
    rising = s > 0
    t = (limit - 0.5 - xs) / s
    t = min(max(np.int64(np.ceil(t)) if rising else np.int64(np.floor(t)) + 1, 1), dy)
    while t > 1 and ((xs + s * (t - 1) + 0.5 >= limit) == rising):
        t -= 1
    while (xs + s * t + 0.5 >= limit) != rising:
        t += 1
    return t


@_jit
def _sort_by_column(values, h):
    """np.sort of run starts x * h + y: bucketed by column, then each (short) column sorted;
    linear where a general sort of every polygon's starts took most of the rasterisation."""
    if len(values) < 2 or h <= 0:
        return np.sort(values)
    lo = values.min()
    first = np.zeros((values.max() - lo) // h + 2, np.int64)
    for value in values:
        first[(value - lo) // h + 1] += 1
    for b in range(1, len(first)):
        first[b] += first[b - 1]
    out = np.empty_like(values)
    for value in values:
        b = (value - lo) // h
        out[first[b]] = value
        first[b] += 1
    # insertion sort: columns hold a handful of values; out is sorted across columns already
    for i in range(1, len(out)):
        value, j = out[i], i
        while j > 0 and out[j - 1] > value:
            out[j] = out[j - 1]
            j -= 1
        out[j] = value
    return out


@_jit
def _polygon_counts(xy, h, w):
    """maskApi.c's rleFrPoly for one polygon xy = [x0, y0, x1, y1, ...].

    rleFrPoly draws every point of the upsampled boundary, segment by segment, then keeps the
    consecutive points whose columns u differ and whose lower column is a pixel centre
    (u = 5 x + 2, x in the image). Consecutive points of different segments are the same
    corner, so only pairs within a segment count, in either direction (the test is symmetric),
    and they are found directly: every fifth step along x-major segments, the step where u
    passes each centre column along y-major ones.
    """
    x, y = _upsampled_corners(xy)
    starts = np.empty(_boundary_points(x, y) + 1, np.int64)
    n = 0
    last_centre = 5 * (w - 1) + 2 if w > 0 else 1 << 62  # size_t arithmetic in C
    for j in range(len(x) - 1):
        xs, xe, ys, ye = x[j], x[j + 1], y[j], y[j + 1]
        dx, dy = abs(xe - xs), abs(ys - ye)
        if (dx >= dy and xs > xe) or (dx < dy and ys > ye):
            xs, xe, ys, ye = xe, xs, ye, ys
        if dx == 0 and dy == 0:
            continue  # one point: no pair (C's NaN slope gives it a row never used)
        if dx >= dy:  # u = xs + t: the pair (t, t + 1) for each centre column xs + t
            s = (ye - ys) / dx
            centre = max(xs, 2)
            centre += (2 - centre) % 5
            while centre < xs + dx and centre <= last_centre:
                t = centre - xs
                v = min(np.int64(ys + s * t + 0.5), np.int64(ys + s * (t + 1) + 0.5))
                starts[n] = ((centre - 2) // 5 * h + _y_start(v, h)) & 0xFFFFFFFF
                n += 1
                centre += 5
        elif xs != xe:  # v = ys + t; u moves monotonically, by at most one column per step
            s = (xe - xs) / dy
            u0, u1 = np.int64(xs + 0.5), np.int64(xs + s * dy + 0.5)
            centre = max(min(u0, u1), 2)
            centre += (2 - centre) % 5
            while centre < max(u0, u1) and centre <= last_centre:
                t = _first_step_past(xs, s, dy, centre)
                starts[n] = ((centre - 2) // 5 * h + _y_start(ys + t - 1, h)) & 0xFFFFFFFF
                n += 1
                centre += 5
    starts[n] = (h * w) & 0xFFFFFFFF
    starts = _sort_by_column(starts[:n + 1], h)
    counts = np.empty(n + 1, np.int64)
    previous = 0
    for j in range(n + 1):
        starts[j], previous = starts[j] - previous, starts[j]
    counts[0] = starts[0]
    m, j = 1, 1
    while j < n + 1:  # a zero-length run joins its neighbours
        if starts[j] > 0:
            counts[m] = starts[j]
            m += 1
            j += 1
        else:
            j += 1
            if j < n + 1:
                counts[m - 1] += starts[j]
                j += 1
    return counts[:m]


@_jit
def _union(a, b):
    """maskApi.c's rleMerge of two masks of the same size (union)."""
    out = np.empty(len(a) + len(b), np.int64)
    ca, cb = a[0], b[0]
    v = va = vb = False
    m, ia, ib, cc, ct = 0, 1, 1, 0, 1
    while ct > 0:
        c = min(ca, cb)
        cc += c
        ca, ia, va = _advance(a, ca - c, ia, va)
        cb, ib, vb = _advance(b, cb - c, ib, vb)
        ct = ca + cb
        previous = v
        v = va or vb
        if v != previous or ct == 0:
            out[m] = cc
            m += 1
            cc = 0
    return out[:m]


@_jit
def _annotation_counts(coords, part_start, first_part, end_part, h, w):
    """lvis-api's ann_to_rle of a polygon list: the union of its parts."""
    mask = _polygon_counts(coords[part_start[first_part]:part_start[first_part + 1]], h, w)
    for p in range(first_part + 1, end_part):
        mask = _union(mask, _polygon_counts(coords[part_start[p]:part_start[p + 1]], h, w))
    return mask


@_jit
def _rasterize(coords, part_start, ann_part_start, hw):
    """All annotations' counts, concatenated, and where each starts."""
    n = len(ann_part_start) - 1
    count_start = np.zeros(n + 1, np.int64)
    counts = np.empty(max(16, len(coords)), np.int64)
    for i in range(n):
        mask = _annotation_counts(coords, part_start, ann_part_start[i], ann_part_start[i + 1],
                                  hw[i, 0], hw[i, 1])
        end = count_start[i] + len(mask)
        if end > len(counts):
            grown = np.empty(max(2 * len(counts), end), np.int64)
            grown[:count_start[i]] = counts[:count_start[i]]
            counts = grown
        counts[count_start[i]:end] = mask
        count_start[i + 1] = end
    return counts[:count_start[n]], count_start


def _is_polygon_list(segm):
    """True where pycocotools' frPyObjects rasterises segm as polygons."""
    return (type(segm) is list and len(segm) > 0 and type(segm[0]) is list
            and len(segm[0]) > 4 and all(type(part) is list for part in segm))


def ground_truth_masks(segms, hw, to_rle, ids):
    """:class:`DecodedMasks` of the annotations' segmentations, as lvis-api's ann_to_rle makes
    them. hw: (N, 2) image [height, width] of each; to_rle(segm, h, w): the pycocotools
    conversion, for what is not a polygon list; ids: the annotation ids, for error messages."""
    assert AVAILABLE
    hw = np.asarray(hw, np.int64).reshape(-1, 2)
    polygon = np.fromiter(map(_is_polygon_list, segms), bool, len(segms))
    polygons = [segm for segm, is_polygon in zip(segms, polygon.tolist()) if is_polygon]
    parts = list(itertools.chain.from_iterable(polygons))
    part_start = np.zeros(len(parts) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, parts), np.int64, len(parts)), out=part_start[1:])
    coords = np.fromiter(itertools.chain.from_iterable(parts), np.float64, part_start[-1])
    ann_part_start = np.zeros(len(polygons) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, polygons), np.int64, len(polygons)), out=ann_part_start[1:])
    if not np.isfinite(coords).all():
        where = np.searchsorted(part_start, np.flatnonzero(~np.isfinite(coords))[0], "right") - 1
        annotation = np.flatnonzero(polygon)[np.searchsorted(ann_part_start, where, "right") - 1]
        raise ValueError(f"ground-truth annotation {np.asarray(ids)[annotation].item()!r} has a "
                         "polygon coordinate that is not a finite number; fix or drop it in the "
                         "annotation file")
    counts, count_start = _rasterize(coords, part_start, ann_part_start, hw[polygon])
    if polygon.all():
        return DecodedMasks(counts, count_start, hw)
    others = np.flatnonzero(~polygon)
    other = ParsedMasks.from_rles([to_rle(segms[i], *hw[i]) for i in others.tolist()]).decoded()
    lengths = np.zeros(len(segms), np.int64)
    lengths[polygon] = np.diff(count_start)
    lengths[others] = np.diff(other.count_start)
    merged_start = np.zeros(len(segms) + 1, np.int64)
    np.cumsum(lengths, out=merged_start[1:])
    merged = np.empty(merged_start[-1], np.int64)
    for source, start, rows in ((counts, count_start, np.flatnonzero(polygon)),
                                (other.counts, other.count_start, others)):
        for k, i in enumerate(rows.tolist()):
            merged[merged_start[i]:merged_start[i + 1]] = source[start[k]:start[k + 1]]
    return DecodedMasks(merged, merged_start, hw)
