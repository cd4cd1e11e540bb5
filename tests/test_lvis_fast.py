# Copyright (c) lt_d2 contributors.
"""evaluate_lvis against lvis-api's own LVISEval, rule by rule and on random data."""
import copy
import logging

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from lvis import LVIS, LVISEval, LVISResults

from lt_d2.evaluation.lvis_fast import (  # first: lt_d2 fixes lvis's np.float
    columnar_results,
    evaluate_lvis,
    result_dicts,
)
from lt_d2.evaluation.lvis_fast_accumulate import accumulate
from lt_d2.evaluation.lvis_fast_match import (
    AREA_RANGES,
    IOU_THRESHOLDS,
    MATCHED,
    MATCHED_ID0_IGNORED,
    MATCHED_IGNORED,
    RECALL_THRESHOLDS,
    box_iou_rowwise,
)

KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf",
        "AR@300", "ARs@300", "ARm@300", "ARl@300"]


def lvis_from_dict(dataset):
    """An lvis.LVIS over a deep copy of dataset (lvis-api mutates its annotations)."""
    api = LVIS.__new__(LVIS)
    api.logger = logging.getLogger("lvis")
    api.dataset = copy.deepcopy(dataset)
    api._create_index()
    return api


def lvis_api(dataset, results, iou_type="bbox", max_dets=300):
    gt = lvis_from_dict(dataset)
    evaluator = LVISEval(gt, LVISResults(gt, copy.deepcopy(results), max_dets=max_dets), iou_type)
    evaluator.run()
    return evaluator.results, evaluator.eval["precision"]


def assert_same_as_lvis_api(dataset, results, iou_type="bbox", max_dets=300):
    expected, expected_precision = lvis_api(dataset, results, iou_type, max_dets)
    metrics, precision = evaluate_lvis(dataset, results, iou_type, max_dets)
    assert list(metrics) == list(expected) == KEYS
    diff = {k: abs(metrics[k] - float(expected[k])) for k in KEYS}
    assert max(diff.values()) <= 1e-9, (diff, dict(metrics), dict(expected))
    np.testing.assert_array_equal(precision, expected_precision)
    # the columnar form must give exactly the same answer
    col_metrics, col_precision = evaluate_lvis(
        dataset, columnar_results(results), iou_type, max_dets)
    assert col_metrics == metrics
    np.testing.assert_array_equal(col_precision, precision)
    return metrics


def square(x, y, side):
    return [float(x), float(y), float(side), float(side)]


def tiny_dataset(anns, images=None, num_cats=3):
    """anns: (image_id, category_id, bbox[, extra fields]); areas default to w * h."""
    images = images or [{"id": 1}]
    images = [dict(dict(height=400, width=400, neg_category_ids=[], not_exhaustive_category_ids=[]),
                   **img) for img in images]
    cats = [{"id": k + 1, "name": f"c{k}", "frequency": "rcf"[k % 3]} for k in range(num_cats)]
    annotations = []
    for i, (image_id, cat_id, box, *extra) in enumerate(anns):
        x, y, w, h = box
        ann = dict(id=i + 1, image_id=image_id, category_id=cat_id, bbox=box, area=w * h,
                   segmentation=[[x, y, x, y + h, x + w, y + h, x + w, y]])
        ann.update(*extra)
        annotations.append(ann)
    return dict(images=images, categories=cats, annotations=annotations)


def det(image_id, cat_id, box, score):
    return dict(image_id=image_id, category_id=cat_id, bbox=list(box), score=score)


def test_box_iou_bit_identical_to_pycocotools():
    rng = np.random.default_rng(0)
    dt = np.c_[rng.uniform(0, 50, (4000, 2)), rng.uniform(0.1, 60, (4000, 2))]
    gt = np.c_[rng.uniform(0, 50, (4000, 2)), rng.uniform(0.1, 60, (4000, 2))]
    dt[::7] = np.round(dt[::7])
    gt[::7] = np.round(gt[::7])
    expected = np.diag(np.asarray(mask_utils.iou(dt, gt, [0] * len(gt))))
    assert np.array_equal(box_iou_rowwise(dt, gt), expected)


def test_ground_truth_as_predictions_is_100():
    dataset = tiny_dataset([(1, 1, square(10, 10, 20)), (1, 2, square(100, 100, 50)),
                            (2, 3, square(50, 60, 120))], images=[{"id": 1}, {"id": 2}])
    results = [det(a["image_id"], a["category_id"], a["bbox"], 1.0) for a in dataset["annotations"]]
    metrics = assert_same_as_lvis_api(dataset, results)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR@300"] == 1.0
    assert metrics["APr"] == metrics["APc"] == metrics["APf"] == pytest.approx(1.0)


def test_federated_rules_neg_and_not_exhaustive():
    images = [{"id": 1, "neg_category_ids": [2], "not_exhaustive_category_ids": [1]},
              {"id": 2, "neg_category_ids": [], "not_exhaustive_category_ids": []}]
    dataset = tiny_dataset([(1, 1, square(10, 10, 40)), (2, 2, square(10, 10, 40))], images)
    results = [det(1, 1, square(10, 10, 40), 0.5),
               det(1, 1, square(200, 200, 40), 0.9),  # unmatched, not exhaustive: ignored
               det(1, 2, square(10, 10, 40), 0.8),  # negative category: a false positive
               det(1, 3, square(10, 10, 40), 0.95),  # neither present nor negative: dropped
               det(2, 2, square(12, 12, 40), 0.7), det(2, 1, square(0, 0, 5), 0.99)]
    assert_same_as_lvis_api(dataset, results)


def test_zero_area_ground_truth_and_detections_dropped():
    dataset = tiny_dataset([(1, 1, square(10, 10, 40)), (1, 1, [50, 50, 0.0, 10.0]),
                            (1, 2, [5, 5, 10, 0])])  # the only class-2 object has no area
    results = [det(1, 1, square(10, 10, 40), 0.5), det(1, 1, [50, 50, 0, 10], 0.9),
               det(1, 1, [10, 10, -40, -40], 0.4), det(1, 2, [5, 5, 10, 1], 0.9)]
    assert_same_as_lvis_api(dataset, results)


def test_per_image_cap_changes_the_answer():
    dataset = tiny_dataset([(1, 1, square(10, 10, 40)), (1, 2, square(100, 100, 40))])
    junk = [det(1, 1, square(300, 300, 20), 0.9) for _ in range(299)]
    results = junk + [det(1, 1, square(10, 10, 40), 0.5), det(1, 2, square(100, 100, 40), 0.3)]
    capped = assert_same_as_lvis_api(dataset, results, max_dets=300)
    assert_same_as_lvis_api(dataset, results, max_dets=5)
    uncapped = assert_same_as_lvis_api(dataset, results, max_dets=-1)
    assert capped["AP"] != uncapped["AP"]


def test_score_ties_keep_input_order():
    dataset = tiny_dataset([(1, 1, square(10, 10, 40)), (2, 1, square(10, 10, 40)),
                            (1, 2, square(10, 10, 40))], images=[{"id": 1}, {"id": 2}])
    results = [det(2, 1, square(200, 200, 40), 0.5), det(1, 1, square(10, 10, 40), 0.5),
               det(2, 1, square(10, 10, 40), 0.5), det(1, 1, square(11, 11, 40), 0.5),
               det(1, 2, square(11, 10, 40), 0.5), det(1, 2, square(10, 10, 40), 0.5)]
    assert_same_as_lvis_api(dataset, results)
    assert_same_as_lvis_api(dataset, results, max_dets=2)


def test_area_ranges_and_ignore_flag():
    dataset = tiny_dataset([(1, 1, square(10, 10, 20)), (1, 1, square(100, 100, 32)),
                            (1, 1, square(200, 10, 60)), (1, 2, square(10, 200, 96)),
                            (1, 2, square(250, 250, 150)),
                            (1, 3, square(10, 10, 50), {"ignore": 1})])
    results = [det(1, 1, square(10, 10, 21), 0.9), det(1, 1, square(100, 100, 30), 0.8),
               det(1, 1, square(200, 10, 100), 0.7), det(1, 2, square(10, 200, 90), 0.6),
               det(1, 2, square(250, 250, 140), 0.5), det(1, 3, square(10, 10, 50), 0.9),
               det(1, 2, square(0, 0, 5), 0.95)]
    assert_same_as_lvis_api(dataset, results)


def test_class_without_ground_truth_and_ground_truth_id_zero():
    dataset = tiny_dataset([(1, 1, square(10, 10, 40))], images=[
                           {"id": 1, "neg_category_ids": [2]}])
    dataset["annotations"][0]["id"] = 0  # lvis-api reads a match to id 0 as "unmatched"
    results = [det(1, 1, square(10, 10, 40), 0.9), det(1, 2, square(10, 10, 40), 0.9)]
    metrics = assert_same_as_lvis_api(dataset, results)
    assert metrics["APc"] == -1  # class 2 has no ground truth: no AP, as in lvis-api


def test_empty_results():
    dataset = tiny_dataset([(1, 1, square(10, 10, 40)), (1, 3, square(10, 10, 100))])
    metrics, precision = evaluate_lvis(dataset, [], "bbox")
    assert metrics["AP"] == 0 and metrics["AR@300"] == 0 and metrics["APc"] == -1
    # what lvis-api defines for no detections (it cannot take an empty list itself)
    expected, _ = lvis_api(dataset, [det(1, 2, square(1, 1, 5), 0.5)])
    assert dict(metrics) == {k: float(v) for k, v in expected.items()}
    assert precision.shape == (10, 101, 3, 4)


def test_bad_input():
    dataset = tiny_dataset([(1, 1, square(10, 10, 40))])
    good = det(1, 1, square(10, 10, 40), 0.5)
    with pytest.raises(ValueError, match=r"1 results have a category_id .* e.g. 7"):
        evaluate_lvis(dataset, [good, det(1, 7, square(1, 1, 5), 0.5)])
    with pytest.raises(ValueError, match=r"2 results have an image_id .* e.g. 5, 6"):
        evaluate_lvis(dataset, [det(5, 1, square(1, 1, 5), 0.5), det(6, 1, square(1, 1, 5), 0.5)])
    with pytest.raises(ValueError, match="NaN score"):
        evaluate_lvis(dataset, [good, det(1, 1, square(1, 1, 5), float("nan"))])
    with pytest.raises(ValueError, match="NaN in bbox"):
        evaluate_lvis(dataset, [good, det(1, 1, [1, float("nan"), 5, 5], 0.3)])
    with pytest.raises(ValueError, match="lack a bbox"):
        evaluate_lvis(dataset, [good, dict(image_id=1, category_id=1, score=0.1)])
    with pytest.raises(ValueError, match="iou_type"):
        evaluate_lvis(dataset, [good], "keypoints")
    columns = columnar_results([good, det(1, 1, square(1, 1, 5), 0.3)])
    with pytest.raises(ValueError, match="one row per detection"):
        evaluate_lvis(dataset, dict(columns, score=columns["score"][:1]))
    with pytest.raises(ValueError, match="image_id must be integers"):
        evaluate_lvis(dataset, dict(columns, image_id=columns["image_id"] + 0.5))
    with pytest.raises(ValueError, match="bbox or a segmentation"):
        evaluate_lvis(dataset, {k: v for k, v in columns.items() if k != "bbox"})
    with pytest.raises(ValueError, match="NaN in bbox"):
        evaluate_lvis(dataset, dict(columns, bbox=np.r_[columns["bbox"][:1], [[1, np.nan, 5, 5]]]))


def random_dataset(rng, num_images, num_cats, segm=False):
    images, annotations, results = [], [], []
    popular = rng.permutation(num_cats)[: max(3, num_cats // 3)] + 1
    for image_id in range(1, num_images + 1):
        height, width = int(rng.integers(100, 400)), int(rng.integers(100, 400))
        cats_here = set()
        for _ in range(int(rng.integers(0, 7))):
            cat = int(rng.choice(popular)) if rng.random(
            ) < 0.7 else int(rng.integers(1, num_cats + 1))
            side = rng.choice([8, 30, 60, 150]) * rng.uniform(0.5, 1.5, 2)
            w, h = np.minimum(side, [width - 1, height - 1])
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            if rng.random() < 0.5:
                x, y, w, h = np.round([x, y, w, h])
            box = [float(x), float(y), float(w), float(h)]
            poly = [[x, y, x + w / 2, y + h, x + w, y + h, x + w, y]]  # not a box: segm differs
            area = float(mask_utils.area(mask_utils.merge(
                mask_utils.frPyObjects(poly, height, width))))
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=cat,
                                    bbox=box, area=area if segm else w * h, segmentation=poly))
            cats_here.add(cat)
            for _ in range(int(rng.integers(0, 6))):  # near-duplicates, some with a wrong class
                jitter = np.array(box) + rng.normal(0, rng.choice([0.03, 0.15]), 4) * [w, h, w, h]
                jitter[2:] = np.abs(jitter[2:])
                wrong = rng.random() < 0.2
                det_cat = int(rng.integers(1, num_cats + 1)) if wrong else cat
                results.append(_random_det(image_id, det_cat, jitter, rng, height, width, segm))
        others = [c for c in range(1, num_cats + 1) if c not in cats_here]
        neg = [int(c) for c in rng.choice(others, min(len(others), 3), replace=False)]
        not_exhaustive = [c for c in sorted(cats_here) if rng.random() < 0.3]
        images.append(dict(id=image_id, height=height, width=width, neg_category_ids=neg,
                           not_exhaustive_category_ids=not_exhaustive))
        for _ in range(int(rng.integers(0, 8))):
            w, h = rng.uniform(2, 90, 2)
            box = [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]
            if (cats_here or neg) and rng.random() < 0.7:
                cat = int(rng.choice(list(cats_here) + neg))
            else:
                cat = int(rng.integers(1, num_cats + 1))
            results.append(_random_det(image_id, cat, box, rng, height, width, segm))
    cats = [{"id": k + 1, "name": f"c{k}", "frequency": "rcf"[int(rng.integers(0, 3))]}
            for k in range(num_cats)]
    rng.shuffle(results)
    return dict(images=images, categories=cats, annotations=annotations), results


def _random_det(image_id, cat, box, rng, height, width, segm):
    x, y, w, h = (float(v) for v in box)
    result = dict(image_id=image_id, category_id=cat, score=float(np.round(rng.random(), 2)))
    if not segm:
        result["bbox"] = [x, y, w, h]
        return result
    poly = [[x, y, x + w / 2, y + h, x + w, y + h, x + w * rng.uniform(0.5, 1), y]]
    rle = mask_utils.merge(mask_utils.frPyObjects(poly, height, width))
    rle["counts"] = rle["counts"].decode("ascii")
    result["segmentation"] = rle
    return result


@pytest.mark.parametrize("seed,iou_type,max_dets", [(0, "bbox", 300), (1, "bbox", 10),
                                                    (2, "segm", 300), (3, "segm", 8)])
def test_random_against_lvis_api(seed, iou_type, max_dets):
    rng = np.random.default_rng(seed)
    dataset, results = random_dataset(
        rng, 250 if iou_type == "bbox" else 120, 40, iou_type == "segm")
    assert_same_as_lvis_api(dataset, results, iou_type, max_dets)


def test_segm_area_rules():
    """LVISResults takes box areas when results carry boxes; use_mask_area follows detectron2."""
    rng = np.random.default_rng(4)
    dataset, results = random_dataset(rng, 60, 12, segm=True)
    for r in results:
        r["bbox"] = list(mask_utils.toBbox(r["segmentation"]) * rng.uniform(0.9, 1.6))
    assert_same_as_lvis_api(dataset, results, "segm")
    expected, _ = lvis_api(
        dataset, [{k: v for k, v in r.items() if k != "bbox"} for r in results], "segm")
    metrics, _ = evaluate_lvis(dataset, results, "segm", use_mask_area=True)
    assert dict(metrics) == {k: float(v) for k, v in expected.items()}
    assert_same_as_lvis_api(dataset, [{k: v for k, v in r.items() if k != "bbox"} for r in results])


def test_accepts_lvis_objects_and_paths(tmp_path):
    rng = np.random.default_rng(5)
    dataset, results = random_dataset(rng, 30, 10)
    expected, _ = evaluate_lvis(dataset, results)
    path = tmp_path / "gt.json"
    path.write_text(__import__("json").dumps(dataset))
    gt = lvis_from_dict(dataset)
    assert evaluate_lvis(str(path), results)[0] == expected
    assert evaluate_lvis(gt, LVISResults(gt, copy.deepcopy(results)))[0] == expected
    assert result_dicts(columnar_results(results)) == results


def test_columns_of_masks_only_and_empty():
    rng = np.random.default_rng(7)
    dataset, results = random_dataset(rng, 40, 10, segm=True)
    columns = columnar_results(results)
    assert "bbox" not in columns
    # boxes from the masks for the bbox task, mask areas: as LVISResults does for dicts
    assert_same_as_lvis_api(dataset, results, "bbox")
    columns["segmentation"] = np.array(columns["segmentation"], object)
    assert evaluate_lvis(dataset, columns, "segm")[0] == evaluate_lvis(dataset, results, "segm")[0]
    empty = {k: np.zeros(0, np.int64) for k in ("image_id", "category_id", "score")}
    assert evaluate_lvis(dataset, empty)[0] == evaluate_lvis(dataset, [])[0]


def test_accumulate_matches_a_per_category_loop():
    """accumulate, all categories at once, against lvis-api's accumulation loop on its inputs."""
    rng = np.random.default_rng(8)
    num_thr, num_areas, num_ranks = len(IOU_THRESHOLDS), len(AREA_RANGES), 50
    # category 0: detections without ground truth; 1: ground truth without detections; category
    # 5: more ground truths than recall thresholds, and runs of true positives of > 128
    num_gt = [0, 7, 1, 4, 30, 150]
    gt_cat = np.repeat(np.arange(len(num_gt)), num_gt)
    gt = dict(num_cats=len(num_gt), cat=gt_cat, ignore=rng.random((len(gt_cat), num_areas)) < 0.3)
    cat = np.repeat(np.arange(len(num_gt)), [20, 0, 3, 15, 60, 1200])
    image, rank = rng.integers(0, 30, len(cat)), rng.integers(0, num_ranks, len(cat))  # ties
    order = np.lexsort((rank, cat, image))  # lvis_fast's (image, category, score) order
    n = len(cat)
    det = dict(image=image[order], cat=cat[order], score_rank=rank[order], num_ranks=num_ranks,
               area=rng.choice([10.0, 32.0 ** 2, 2000.0, 96.0 ** 2, 5e4], n),
               not_exhaustive=rng.random(n) < 0.1)
    active = np.flatnonzero(rng.random(n) < 0.7)
    state = rng.integers(0, 5, (len(active), num_areas * num_thr)).astype(np.int8)
    # as greedy_match: a true positive only where the category has ground truth in the range
    gt_in_range = np.stack([np.bincount(gt_cat[~gt["ignore"][:, a]], minlength=len(num_gt))
                            for a in range(num_areas)], 1) > 0
    state[(state == MATCHED) & ~np.repeat(gt_in_range[det["cat"][active]], num_thr, 1)] = 0

    expected_precision = -np.ones((num_thr, len(RECALL_THRESHOLDS), len(num_gt), num_areas))
    expected_recall = -np.ones((num_thr, len(num_gt), num_areas))
    all_states = np.zeros((n, num_areas * num_thr), np.int8)
    all_states[active] = state
    by_score = np.lexsort((np.arange(n), det["image"], det["score_rank"]))  # then image, input
    for k in range(len(num_gt)):
        idx = by_score[det["cat"][by_score] == k]
        area = det["area"][idx]
        for a, (lo, hi) in enumerate(AREA_RANGES):
            g = np.count_nonzero((gt_cat == k) & ~gt["ignore"][:, a])
            if g == 0:
                continue
            outside = (area < lo) | (area > hi) | det["not_exhaustive"][idx]
            for t in range(num_thr):
                s = all_states[idx, a * num_thr + t]
                matched = (s == MATCHED) | (s == MATCHED_IGNORED)
                ignored = (s == MATCHED_IGNORED) | (s == MATCHED_ID0_IGNORED) | (~matched & outside)
                tp = np.cumsum(matched & ~ignored).astype(float)
                fp = np.cumsum(~matched & ~ignored).astype(float)
                pr = (tp / (fp + tp + np.spacing(1))).tolist()
                for i in range(len(pr) - 1, 0, -1):
                    pr[i - 1] = max(pr[i - 1], pr[i])
                at = np.searchsorted(tp / g, RECALL_THRESHOLDS, side="left")
                expected_precision[t, :, k, a] = [pr[i] if i < len(pr) else 0.0 for i in at]
                expected_recall[t, k, a] = tp[-1] / g if len(tp) else 0.0

    precision, recall = accumulate(det, gt, active, state)
    assert np.array_equal(precision, expected_precision)
    assert np.array_equal(recall, expected_recall)
    assert (precision[:, :, 0] == -1).all()
    assert (precision[:, :, 1][..., gt_in_range[1]] == 0).all()
    assert (recall[:, 2:] > 0).any(axis=(0, 2)).all()  # every other category has true positives


@pytest.mark.parametrize("distributed", [False, True])
def test_lt_lvis_evaluator_backends_agree(tmp_path, distributed):
    import torch
    from detectron2.data import MetadataCatalog
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json
    from detectron2.structures import Boxes, Instances

    from lt_d2.evaluation.lvis_evaluation import LTLVISEvaluator

    rng = np.random.default_rng(6)
    dataset, results = random_dataset(rng, 25, 8, segm=True)
    path = tmp_path / "gt.json"
    path.write_text(__import__("json").dumps(dataset))
    name = f"lvis_fast_test_{distributed}"
    MetadataCatalog.get(name).set(json_file=str(path))
    inputs, outputs = [], []
    for img in dataset["images"]:
        mine = [r for r in results if r["image_id"] == img["id"]]
        masks = np.stack([mask_utils.decode(r["segmentation"]) for r in mine]) if mine \
            else np.zeros((0, img["height"], img["width"]), np.uint8)
        boxes = mask_utils.toBbox([r["segmentation"] for r in mine]).reshape(-1, 4)
        inst = Instances((img["height"], img["width"]))
        inst.pred_boxes = Boxes(torch.tensor(np.c_[boxes[:, :2], boxes[:, :2] + boxes[:, 2:]]))
        inst.scores = torch.tensor([r["score"] for r in mine], dtype=torch.float32)
        inst.pred_classes = torch.tensor([r["category_id"] - 1 for r in mine], dtype=torch.int64)
        inst.pred_masks = torch.from_numpy(masks.astype(bool))
        inputs.append({"image_id": img["id"]})
        outputs.append({"instances": inst})
    answers = {}
    for backend in ("fast", "lvis-api"):
        evaluator = LTLVISEvaluator(name, distributed=distributed, backend=backend,
                                    output_dir=str(tmp_path / backend))
        evaluator.reset()
        evaluator.process(inputs, outputs)
        assert isinstance(evaluator._predictions[0]["instances"]["score"], np.ndarray)
        answers[backend] = (evaluator.evaluate(), evaluator._last_precision)
        # the results json is detectron2's, dict for dict
        expected = [dict(r, category_id=r["category_id"] + 1) for inp, out in zip(inputs, outputs)
                    for r in instances_to_coco_json(out["instances"], inp["image_id"])]
        written = __import__("json").loads(
            (tmp_path / backend / "lvis_instances_results.json").read_text())
        assert written == expected and list(written[0]) == list(expected[0])
    fast, api = answers["fast"][0], answers["lvis-api"][0]
    assert sorted(fast) == ["bbox", "segm"] and fast.keys() == api.keys()
    for task in fast:
        assert list(fast[task]) == list(api[task])
        assert max(abs(fast[task][k] - api[task][k]) for k in fast[task]) <= 1e-9
        assert np.array_equal(answers["fast"][1][task], answers["lvis-api"][1][task])
    assert 0 < fast["segm"]["AP"] < 100
    for backend in ("fast", "lvis-api"):  # no detections at all: detectron2's NaN metrics
        evaluator = LTLVISEvaluator(name, distributed=distributed, backend=backend)
        evaluator.reset()
        evaluator.process(inputs[:1], [{"instances": outputs[0]["instances"][:0]}])
        empty = evaluator.evaluate()
        assert list(empty) == ["bbox"] and all(np.isnan(v) for v in empty["bbox"].values())
