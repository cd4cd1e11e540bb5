# Copyright (c) lt_d2 contributors.
"""Per-class AP and the long-tail report; Fixed AP (per-class top-k, no per-image cap)."""
import csv
import json
import os
import time

import numpy as np
import pytest
import torch
from lvis import LVIS, LVISEval, LVISResults

# lt_d2 first: importing it patches lvis-api's use of np.float
from lt_d2.evaluation.fixed_ap import FixedAPEvaluator, PerClassTopK, fixed_ap, top_k_per_class
from lt_d2.evaluation.longtail_report import per_class_ap, write_longtail_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_lvis(lvis_gt, results, max_dets, cat_ids=None):
    lvis_eval = LVISEval(lvis_gt, LVISResults(lvis_gt, results, max_dets=max_dets), "bbox")
    lvis_eval.params.max_dets = max_dets
    if cat_ids is not None:
        lvis_eval.params.cat_ids = cat_ids
    lvis_eval.run()
    return lvis_eval


@pytest.fixture(scope="module")
def tiny_val_json(tiny_root):
    return str(tiny_root / "lt_synthetic" / "annotations" / "lt_synthetic_val.json")


def noisy_detections(lvis_gt, seed=0):
    """Jittered copies of the ground truth plus false positives, with random scores."""
    rng = np.random.default_rng(seed)
    cat_ids = sorted(lvis_gt.get_cat_ids())
    results = []
    for ann in lvis_gt.dataset["annotations"]:
        for _ in range(2):
            x, y, w, h = ann["bbox"]
            box = [x + rng.normal(0, 2), y + rng.normal(0, 2), w * rng.uniform(0.8, 1.2),
                   h * rng.uniform(0.8, 1.2)]
            results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                            "bbox": box, "score": float(rng.uniform(0.05, 1))})
    for image_id in lvis_gt.get_img_ids():
        for _ in range(4):
            results.append({"image_id": image_id, "category_id": int(rng.choice(cat_ids)),
                            "bbox": [*rng.uniform(0, 40, 2), *rng.uniform(8, 24, 2)],
                            "score": float(rng.uniform(0, 0.6))})
    return results


def test_per_class_ap_matches_lvis_eval(tiny_val_json):
    lvis_gt = LVIS(tiny_val_json)
    results = noisy_detections(lvis_gt)
    full = run_lvis(lvis_gt, results, 300)
    aps = per_class_ap(full.eval["precision"])
    cat_ids = sorted(lvis_gt.get_cat_ids())
    expected = [run_lvis(lvis_gt, results, 300, cat_ids=[c]).results["AP"] for c in cat_ids]
    np.testing.assert_allclose(aps, expected, rtol=1e-12)
    assert np.nanmean(aps) == pytest.approx(full.results["AP"], rel=1e-12)
    assert 0 < np.nanmean(aps) < 1


def test_per_class_ap_nan_without_ground_truth():
    precision = np.full((10, 101, 3, 4), -1.0)
    precision[:, :, 0, 0] = 0.5
    precision[:5, :, 2, 0] = 1.0
    precision[5:, :, 2, 0] = 0.0
    precision[:, :, 1, 1:] = 0.9  # another area range: must not count
    np.testing.assert_allclose(per_class_ap(precision), [0.5, np.nan, 0.5])


def test_longtail_report_files(tmp_path):
    names = ["cat", "dog", "emu", "yak", "owl"]
    aps = np.array([0.1, 0.3, np.nan, 0.6, 0.8])
    image_count = np.array([3, 8, 50, 70, 500])
    frequency = np.array(["r", "r", "c", "c", "f"])
    groups = write_longtail_report(str(tmp_path), "bbox", names, aps, image_count, frequency)
    assert groups["APr"] == pytest.approx(0.2)
    assert groups["APc"] == pytest.approx(0.6)  # the NaN class is left out
    assert groups["APf"] == pytest.approx(0.8)
    assert groups["AP"] == pytest.approx(np.mean([0.1, 0.3, 0.6, 0.8]))

    with open(tmp_path / "longtail_report_bbox.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == names
    assert [int(r["class_id"]) for r in rows] == list(range(5))
    assert [int(r["image_count"]) for r in rows] == image_count.tolist()
    assert [r["frequency"] for r in rows] == frequency.tolist()
    assert float(rows[3]["ap"]) == 0.6 and rows[2]["ap"] == "nan"

    report = json.loads((tmp_path / "longtail_report_bbox.json").read_text())
    assert report["task"] == "bbox"
    assert report["groups"]["APc"] == {"ap": pytest.approx(0.6), "num_classes": 2,
                                       "num_evaluated": 1}
    assert report["classes"][2]["ap"] is None and report["classes"][4]["name"] == "owl"

    png = (tmp_path / "longtail_ap_vs_frequency_bbox.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 1000
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["longtail_report_bbox.csv", "longtail_report_bbox.json",
         "longtail_ap_vs_frequency_bbox.png"])  # no temporary files left behind


def test_longtail_report_lvis_size_is_fast(tmp_path):
    rng = np.random.default_rng(0)
    image_count = rng.integers(0, 2000, 1203)
    frequency = np.where(image_count <= 10, "r", np.where(image_count <= 100, "c", "f"))
    aps = rng.random(1203)
    aps[::50] = np.nan
    start = time.perf_counter()
    groups = write_longtail_report(str(tmp_path / "out"), "segm", [f"c{i}" for i in range(1203)],
                                   aps, image_count, frequency)
    assert time.perf_counter() - start < 10
    assert set(groups) == {"AP", "APr", "APc", "APf"}
    assert (tmp_path / "out" / "longtail_ap_vs_frequency_segm.png").read_bytes()[:8] == \
        PNG_SIGNATURE


def brute_force_top_k(rows, k):
    """rows: (class, image, position, score, box); the reference tie rule spelt out."""
    rows = sorted(rows, key=lambda r: (r[0], -r[3], r[1], r[2]))
    kept, per_class = [], {}
    for row in rows:
        if per_class.get(row[0], 0) < k:
            per_class[row[0]] = per_class.get(row[0], 0) + 1
            kept.append((row[0], row[1], row[3], tuple(row[4])))
    return kept


def as_tuples(results):
    return [(r["category_id"], r["image_id"], r["score"], tuple(r["bbox"])) for r in results]


def test_per_class_top_k_keeps_exactly_top_k_and_merges():
    rng = np.random.default_rng(1)
    k = 7
    single = PerClassTopK(k, flush_rows=5)
    shards = [PerClassTopK(k, flush_rows=3) for _ in range(3)]
    rows = []
    for image_id in rng.permutation(60):
        n = int(rng.integers(0, 15))
        scores = rng.integers(0, 8, n) / 8.0  # coarse scores: many ties at the cut
        classes = rng.integers(1, 5, n)
        boxes = rng.random((n, 4))
        single.add(image_id, boxes, scores, classes)
        shards[image_id % 3].add(image_id, boxes, scores, classes)
        rows += [(int(c), int(image_id), p, s, b) for p, (c, s, b) in
                 enumerate(zip(classes, scores, boxes))]
    # memory bound: a class is pruned as soon as it holds more than 2k, the buffer is flushed
    assert max(single._counts.values()) <= 2 * k and single._pending_rows < 5
    expected = brute_force_top_k(rows, k)
    assert as_tuples(single.results()) == expected
    assert len(single) == len(expected) == 4 * k
    merged = shards[2].merge(shards[0]).merge(shards[1])
    assert as_tuples(merged.results()) == expected
    flat = [{"image_id": r[1], "category_id": r[0], "score": r[3], "bbox": list(r[4])}
            for r in sorted(rows, key=lambda r: (r[1], r[2]))]
    assert as_tuples(top_k_per_class(flat, k)) == expected


def write_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f)
    return str(path)


@pytest.fixture()
def crowded_image_gt(tmp_path):
    """One image with a "frequent" object and a "rare" one; image 2 holds another rare one."""
    image = {"height": 200, "width": 200, "neg_category_ids": [], "not_exhaustive_category_ids": []}
    return write_json(tmp_path / "gt.json", {
        "images": [dict(image, id=1), dict(image, id=2)],
        "categories": [{"id": 1, "name": "person", "frequency": "f"},
                       {"id": 2, "name": "okapi", "frequency": "r"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [100, 100, 40, 40], "area": 1600},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [20, 20, 40, 40], "area": 1600},
        ],
    })


def crowded_results():
    # 400 high-scoring person boxes push image 1's okapi (score 0.1) past the 300th rank
    results = [{"image_id": 1, "category_id": 1, "bbox": [10 + i % 20, 10, 50, 50],
                "score": 0.5 + i / 1000} for i in range(400)]
    results.append({"image_id": 1, "category_id": 2, "bbox": [100, 100, 40, 40], "score": 0.1})
    results.append({"image_id": 2, "category_id": 2, "bbox": [20, 20, 40, 40], "score": 0.05})
    return results


def test_fixed_ap_lifts_the_per_image_cap(crowded_image_gt):
    lvis_gt = LVIS(crowded_image_gt)
    standard = run_lvis(lvis_gt, crowded_results(), 300).results
    uncapped = run_lvis(lvis_gt, crowded_results(), -1).results
    fixed = fixed_ap(lvis_gt, crowded_results(), topk=10000)
    assert set(fixed) == {"APfixed", "APfixed_r", "APfixed_c", "APfixed_f"}
    assert fixed["APfixed"] == pytest.approx(uncapped["AP"], rel=1e-12)
    assert fixed["APfixed_r"] == pytest.approx(uncapped["APr"], rel=1e-12)
    assert fixed["APfixed_f"] == pytest.approx(uncapped["APf"], rel=1e-12)
    assert np.isnan(fixed["APfixed_c"])  # no common class (lvis-api says -1)
    assert fixed["APfixed_r"] == pytest.approx(1.0)
    assert standard["APr"] < 0.6 < fixed["APfixed_r"]
    assert standard["AP"] < fixed["APfixed"]
    # the per-class cap: only the 3 best persons survive, evaluated with no image cap
    kept = top_k_per_class(crowded_results(), 3)
    assert len(kept) == 5
    assert fixed_ap(crowded_image_gt, crowded_results(), topk=3)["APfixed"] == pytest.approx(
        run_lvis(lvis_gt, kept, -1).results["AP"], rel=1e-12)


def test_fixed_ap_without_results_is_nan(crowded_image_gt):
    assert all(np.isnan(v) for v in fixed_ap(crowded_image_gt, []).values())


def fake_outputs(lvis_gt, id_map, image_id, rng):
    """Model outputs for one image: every ground-truth box (score 0.9) and junk boxes."""
    from detectron2.structures import Boxes, Instances

    anns = lvis_gt.load_anns(lvis_gt.get_ann_ids(img_ids=[image_id]))
    xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
    classes = [id_map[a["category_id"]] for a in anns]
    scores = [0.9] * len(anns)
    for _ in range(5):
        x, y = rng.uniform(0, 40, 2)
        xyxy.append([x, y, x + 12, y + 12])
        classes.append(int(rng.integers(0, len(id_map))))
        scores.append(float(rng.uniform(0.0, 0.95)))
    instances = Instances((64, 64))
    instances.pred_boxes = Boxes(torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4))
    instances.scores = torch.tensor(scores, dtype=torch.float32)
    instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return {"instances": instances}


def test_fixed_ap_evaluator(tiny_root, tiny_val_json, tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from lt_d2.data.datasets import register_lt_dataset

    name = "fixed_ap_tiny_val"
    if name not in DatasetCatalog.list():
        register_lt_dataset(name, tiny_val_json, str(tiny_root / "lt_synthetic"),
                            evaluator_type="lvis")
    DatasetCatalog.get(name)  # the loader sets thing_dataset_id_to_contiguous_id
    id_map = MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id
    lvis_gt = LVIS(tiny_val_json)

    evaluator = FixedAPEvaluator(name, topk=4, output_dir=str(tmp_path), distributed=True)
    evaluator.reset()
    rng = np.random.default_rng(0)
    expected_results = []
    for image_id in sorted(lvis_gt.get_img_ids()):
        outputs = fake_outputs(lvis_gt, id_map, image_id, rng)
        evaluator.process([{"image_id": image_id}], [outputs])
        instances = outputs["instances"]
        reverse = {v: k for k, v in id_map.items()}
        for box, score, cls in zip(instances.pred_boxes.tensor.tolist(),
                                   instances.scores.tolist(), instances.pred_classes.tolist()):
            x0, y0, x1, y1 = box
            expected_results.append({"image_id": image_id, "category_id": reverse[cls],
                                     "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
    result = evaluator.evaluate()
    assert set(result) == {"bbox_fixed"}
    expected = fixed_ap(lvis_gt, expected_results, topk=4)
    for key, value in result["bbox_fixed"].items():
        assert value == pytest.approx(100 * expected[key], rel=1e-9, abs=1e-9)
    assert 0 < result["bbox_fixed"]["APfixed"] < 100
    assert evaluator.per_class_ap.shape == (len(id_map),)
    report = json.loads((tmp_path / "fixed_ap_bbox.json").read_text())
    assert report["metrics"]["APfixed"] == pytest.approx(result["bbox_fixed"]["APfixed"])
    assert len(report["per_class_ap"]) == len(id_map)

    evaluator.reset()
    assert evaluator.evaluate() == {}  # nothing processed
