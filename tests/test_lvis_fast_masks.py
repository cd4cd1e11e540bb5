# Copyright (c) lt_d2 contributors.
"""The compiled mask path of the fast LVIS evaluation against pycocotools, value for value."""
import numpy as np
import pycocotools.mask as mask_utils
import pytest

from lt_d2.evaluation import lvis_fast_masks
from lt_d2.evaluation.lvis_fast import columnar_results, evaluate_lvis
from lt_d2.evaluation.lvis_fast_masks import ParsedMasks, mask_candidate_pairs
from lt_d2.evaluation.rle_column import RLEColumn, compressed_counts

from .test_lvis_fast import assert_same_as_lvis_api, random_dataset

needs_numba = pytest.mark.skipif(not lvis_fast_masks.AVAILABLE, reason="numba not installed")


def random_masks(rng, count, height, width):
    """Binary masks that exercise the RLE format: blobs, empty, full, single pixels, masks
    that start with foreground, stripes (long count lists, multi-character numbers)."""
    masks = np.zeros((count, height, width), np.uint8)
    for i in range(count):
        kind = i % 7
        if kind == 0:
            pass  # empty
        elif kind == 1:
            masks[i] = 1
        elif kind == 2:
            masks[i, 0, 0] = 1  # foreground first: the first count is 0
        elif kind == 3:
            masks[i, :, int(rng.integers(0, width)):] = 1  # runs that wrap into the next column
        elif kind == 4:
            masks[i, ::2, ::3] = 1
        else:
            x0, y0 = rng.integers(0, width - 1), rng.integers(0, height - 1)
            x1, y1 = rng.integers(x0 + 1, width + 1), rng.integers(y0 + 1, height + 1)
            masks[i, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.9
    return masks


def encode(masks, as_str):
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    for rle in rles:
        if as_str:
            rle["counts"] = rle["counts"].decode("ascii")
    return rles


@needs_numba
@pytest.mark.parametrize("as_str", [True, False])
def test_areas_and_extents_match_pycocotools(as_str):
    rng = np.random.default_rng(0)
    masks = random_masks(rng, 70, 37, 300)  # 37 * 300 > 2 ** 13: counts of 3+ characters
    rles = encode(masks, as_str)
    parsed = ParsedMasks.from_rles(rles)
    np.testing.assert_array_equal(parsed.area, mask_utils.area(rles).astype(np.int64))
    decoded = parsed.decoded()  # the same measures from decoded counts
    np.testing.assert_array_equal(decoded.area, parsed.area)
    np.testing.assert_array_equal(decoded.extent, parsed.extent)
    for mask, (x0, y0, x1, y1) in zip(masks, parsed.extent.tolist()):
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            assert x1 < x0 or y1 < y0
        else:  # every pixel inside; exact where no run wraps (rows of one column)
            assert x0 <= xs.min() and xs.max() <= x1 and y0 <= ys.min() and ys.max() <= y1
            assert (x0, x1) == (xs.min(), xs.max())


@needs_numba
def test_candidate_pairs_equal_pycocotools_iou():
    rng = np.random.default_rng(1)
    det_masks, gt_masks = [], []
    for _ in range(4):  # masks that overlap a lot: random boxes within a small image
        det_masks.append(random_masks(rng, 21, 24, 40))
        gt_masks.append(random_masks(rng, 7, 24, 40))
    det_masks, gt_masks = np.concatenate(det_masks), np.concatenate(gt_masks)
    # near copies of ground truth, so that many pairs pass 0.5
    copies = gt_masks[rng.integers(0, len(gt_masks), 40)].copy()
    copies[:, rng.integers(0, 24, 40), rng.integers(0, 40, 40)] ^= 1
    det_masks = np.concatenate([det_masks, copies])
    det_rles, gt_rles = encode(det_masks, True), encode(gt_masks, False)
    gt_rles.append(encode(np.ones((1, 25, 40), np.uint8), False)[0])  # another size: IoU -1
    det_group = np.sort(rng.integers(0, 5, len(det_rles)))
    gt_group = np.sort(rng.integers(1, 6, len(gt_rles)))
    det_rows = rng.permutation(len(det_rles))  # detection i is mask det_rows[i]
    pairs = mask_candidate_pairs(ParsedMasks.from_rles(det_rles), det_rows, det_group,
                                 ParsedMasks.from_rles(gt_rles).decoded(), gt_group)

    expected = []
    for i, group in enumerate(det_group.tolist()):
        for j in np.flatnonzero(gt_group == group).tolist():
            iou = mask_utils.iou([det_rles[det_rows[i]]], [gt_rles[j]], [0])[0, 0]
            if iou >= 0.5:
                expected.append((i, j, iou))
    got = sorted(zip(*(p.tolist() for p in pairs)))
    assert len(expected) > 20
    assert got == sorted(expected)  # == on floats: bit-identical IoUs


def test_compressed_counts_tells_polygons_and_uncompressed_apart():
    rle = encode(np.ones((1, 4, 4), np.uint8), True)[0]
    assert compressed_counts([rle]) == [rle["counts"]]
    assert compressed_counts([[[0, 0, 1, 0, 1, 1]]]) is None
    assert compressed_counts([{"size": [4, 4], "counts": [0, 16]}]) is None
    with pytest.raises(ValueError, match="compressed RLEs"):
        RLEColumn.from_rles([{"size": [4, 4], "counts": [0, 16]}])


@pytest.mark.parametrize("compiled", [True, False])
def test_segm_same_as_lvis_api_with_and_without_numba(monkeypatch, compiled):
    if compiled and not lvis_fast_masks.AVAILABLE:
        pytest.skip("numba not installed")
    monkeypatch.setattr(lvis_fast_masks, "AVAILABLE", compiled)
    rng = np.random.default_rng(7)
    dataset, results = random_dataset(rng, 60, 12, segm=True)
    assert_same_as_lvis_api(dataset, results, "segm")
    assert_same_as_lvis_api(dataset, results, "segm", max_dets=5)
    metrics, precision = evaluate_lvis(dataset, results, "segm", max_dets=5)
    # lvis-api takes compressed RLEs only; the same masks as uncompressed RLEs score the same
    for r in results[:10]:
        r["segmentation"] = uncompressed(r["segmentation"])
    for given in (results, columnar_results(results)):
        again, again_precision = evaluate_lvis(dataset, given, "segm", max_dets=5)
        assert again == metrics
        np.testing.assert_array_equal(again_precision, precision)


def uncompressed(rle):
    flat = mask_utils.decode(rle).ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.r_[0, change, len(flat)]).tolist()
    return {"size": rle["size"], "counts": ([0] if flat[0] else []) + runs}


def random_polygons(rng, count, height, width):
    """Polygon lists as annotators and converters make them: parts of 3-12 corners, some
    outside the image, repeated corners, integer and fractional coordinates, odd lengths."""
    segms = []
    for i in range(count):
        parts = []
        for _ in range(1 + (i % 4 == 0) + (i % 9 == 0)):
            corners = int(rng.integers(3, 13))
            cx, cy = rng.uniform(-20, width + 20), rng.uniform(-20, height + 20)
            radius = rng.choice([0.4, 3, 30, 150]) * rng.uniform(0.5, 1.5, corners)
            angle = np.sort(rng.uniform(0, 2 * np.pi, corners))
            xy = np.stack([cx + radius * np.cos(angle), cy + radius * np.sin(angle)], 1)
            if i % 3 == 0:
                xy = np.round(xy)
            if i % 5 == 0:
                xy = np.repeat(xy, 2, axis=0)  # every corner twice
            part = xy.ravel().tolist()
            if i % 7 == 0:
                part.append(1.0)  # odd length: pycocotools ignores the last number
            parts.append(part)
        segms.append(parts)
    return segms


@needs_numba
def test_polygons_rasterised_like_pycocotools():
    from lt_d2.evaluation.lvis_fast_polygons import ground_truth_masks
    from lt_d2.evaluation.lvis_fast_results import to_rle

    rng = np.random.default_rng(3)
    segms, hw = [], []
    for height, width in [(60, 80), (333, 500), (1, 40), (480, 7)]:
        segms += random_polygons(rng, 150, height, width)
        hw += [(height, width)] * 150
    segms[0] = [[5.0, 5.0, 20.0, 5.0, 20.0, 30.0], [1.0, 1.0, 3.0, 3.0], []]  # 2 and 0 corners
    # RLEs go through pycocotools
    segms[2] = {"size": [60, 80], "counts": [7, 30, 60 * 80 - 37]}
    segms[3] = encode(np.ones((1, 60, 80), np.uint8), False)[0]
    masks = ground_truth_masks(segms, hw, to_rle, list(range(len(segms))))
    expected = [to_rle(segm, *size) for segm, size in zip(segms, hw)]
    reference = ParsedMasks.from_rles(expected).decoded()
    np.testing.assert_array_equal(masks.count_start, reference.count_start)
    np.testing.assert_array_equal(masks.counts, reference.counts)
    areas = [mask_utils.area(expected[i:i + 200]) for i in range(0, len(expected), 200)]
    np.testing.assert_array_equal(masks.area, np.concatenate(areas))  # (> 255 at once overflow)


@needs_numba
def test_non_finite_polygon_named():
    from lt_d2.evaluation.lvis_fast_polygons import ground_truth_masks
    from lt_d2.evaluation.lvis_fast_results import to_rle

    triangle = [1.0, 1.0, 5.0, 1.0, 5.0, 5.0]
    segms = [[triangle], [triangle, [2.0, float("nan"), 3.0, 3.0, 4.0, 2.0]]]
    with pytest.raises(ValueError, match="annotation 42 has a polygon coordinate that is not"):
        ground_truth_masks(segms, [(10, 10)] * 2, to_rle, [41, 42])


def test_rle_column_reads_like_the_dicts():
    import pickle

    from lt_d2.evaluation.lvis_fast import result_dicts

    rng = np.random.default_rng(5)
    first = encode(random_masks(rng, 9, 12, 20), False)
    second = encode(random_masks(rng, 4, 7, 9), True)
    column = RLEColumn.concatenate([RLEColumn.from_rles(first), RLEColumn.from_rles(second)])
    as_dicts = [{"size": r["size"], "counts": r["counts"] if isinstance(r["counts"], str)
                 else r["counts"].decode("ascii")} for r in first + second]
    assert len(column) == 13 and list(column) == as_dicts and column[10] == as_dicts[10]
    rows = np.array([12, 0, 5])
    assert list(column.take(rows)) == [as_dicts[i] for i in rows]
    assert list(column[2:4]) == as_dicts[2:4]
    assert list(pickle.loads(pickle.dumps(column))) == as_dicts  # contiguous: buffer as is
    restored = pickle.loads(pickle.dumps(column.take(rows)))  # compact: only its own text
    assert list(restored) == [as_dicts[i] for i in rows]
    assert len(restored.buf) == sum(len(as_dicts[i]["counts"]) for i in rows)
    columns = dict(image_id=np.arange(13), category_id=np.ones(13, np.int64),
                   score=np.linspace(0, 1, 13), segmentation=column)
    assert [r["segmentation"] for r in result_dicts(columns)] == as_dicts
    assert len(RLEColumn.concatenate([])) == 0
