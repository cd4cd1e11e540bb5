#!/usr/bin/env python
# Copyright (c) lt_d2 contributors.
"""Benchmark lt_d2's fast LVIS evaluation against lvis-api (lvis 0.5.3) on an LVIS-v1-like set.

    python tools/benchmark_lvis_eval.py [--images 19809 --classes 1203 --api-images 2000]
    python tools/benchmark_lvis_eval.py --iou-type segm            # 1,000 images by default
    python tools/benchmark_lvis_eval.py --images 2000 --classes 300 --api-images 300   # quick

The data are generated in memory from --seed: r/c/f classes in LVIS v1 proportions (337/461/405),
~12.4 annotations per image of realistic sizes (small/medium/large), neg_category_ids and
not_exhaustive_category_ids per image, a few zero-area boxes, 300 detections per image (near
ground truth and random, scores rounded to 3 decimals so that they tie). Each measurement runs
in its own subprocess, which regenerates the same data: the fast evaluator on the full set and on
the first --api-images images, lvis-api on those only (its time on the full set is extrapolated
linearly in the number of images, and said so). Peak memory is the process' peak resident set
during the evaluation, input included (Linux: VmHWM reset after the data are built). The fast
evaluator is warmed up on a 3-image set first (numba's kernel loading, timed and printed apart),
then gets its detections as NumPy columns (--input columns, what LTLVISEvaluator keeps) or
as lvis-format dicts (--input dicts, as read from a results json); lvis-api always gets dicts.
"""
import argparse
import gc
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import pycocotools.mask as mask_utils  # noqa: E402

from lt_d2.evaluation.lvis_fast import (  # noqa: E402  (imports lt_d2: lvis's np.float fix)
    evaluate_lvis,
)
from lt_d2.evaluation.rle_column import RLEColumn  # noqa: E402


def octagon(x, y, w, h):
    """A box with its corners cut: masks that differ from their boxes."""
    return [x + w / 4, y, x + 3 * w / 4, y, x + w, y + h / 4, x + w, y + 3 * h / 4,
            x + 3 * w / 4, y + h, x + w / 4, y + h, x, y + 3 * h / 4, x, y + h / 4]


def make_lvis_like(num_images, num_classes, dets_per_image, seed, segm, columnar=False):
    """(dataset dict, results): lvis-format result dicts, or with columnar the same detections
    as evaluate_lvis' columns (masks as an RLEColumn, as LTLVISEvaluator keeps them), built
    without a result dict ever existing."""
    rng = np.random.default_rng(seed)  # one stream, drawn in a fixed order: same data each run
    num_r, num_c = round(num_classes * 337 / 1203), round(num_classes * 461 / 1203)
    freq = np.array(["r"] * num_r + ["c"] * num_c + ["f"] * (num_classes - num_r - num_c))
    rng.shuffle(freq)
    popularity = np.select([freq == "r", freq == "c"], [rng.uniform(0.5, 3, num_classes),
                           rng.uniform(5, 40, num_classes)], rng.uniform(60, 800, num_classes))
    p = popularity / popularity.sum()
    height = rng.choice([375, 427, 480, 500, 640], num_images)
    width = rng.choice([480, 500, 612, 640], num_images)
    ann_img, ann_cat, ann_box = _annotation_boxes(rng, p, height, width)
    first_ann = np.searchsorted(ann_img, np.arange(num_images + 1))
    dataset = _dataset(rng, freq, p, height, width, ann_img, ann_cat, ann_box, first_ann, segm)
    det_img, det_cat, det_box, det_score = _detections(rng, dets_per_image, p, height, width,
                                                       ann_img, ann_cat, ann_box, first_ann)
    order = np.lexsort((rng.random(len(det_img)), det_img))
    det_img, det_cat, det_box, det_score = (v[order] for v in (det_img, det_cat, det_box,
                                                               det_score))
    if columnar:
        return dataset, _columnar_results(det_img, det_cat, det_box, det_score, height, width,
                                          segm)
    return dataset, _result_dicts(det_img, det_cat, det_box, det_score, height, width, segm)


def _annotation_boxes(rng, p, height, width):
    """(image index, class index, XYWH box) of each ground-truth instance."""
    num_images, num_classes = len(height), len(p)
    # ~3.5 categories per image, ~3.5 instances each: ~12.4 annotations per image as LVIS v1 val
    slots = rng.poisson(2.6, num_images) + 1
    pairs = np.unique(np.repeat(np.arange(num_images), slots) * num_classes
                      + rng.choice(num_classes, slots.sum(), p=p))
    instances = rng.geometric(1 / 3.5, len(pairs))
    ann_img = np.repeat(pairs // num_classes, instances)
    ann_cat = np.repeat(pairs % num_classes, instances)
    side = np.exp(rng.uniform(np.log(4), np.log(350), len(ann_img)))
    aspect = np.exp(rng.normal(0, 0.5, len(ann_img)))
    w = np.minimum(side * np.sqrt(aspect), width[ann_img] - 1).round(2)
    h = np.minimum(side / np.sqrt(aspect), height[ann_img] - 1).round(2)
    w[rng.random(len(w)) < 0.001] = 0.0  # LVIS has a few degenerate boxes
    x = (rng.random(len(w)) * (width[ann_img] - w)).round(2)
    y = (rng.random(len(w)) * (height[ann_img] - h)).round(2)
    return ann_img, ann_cat, np.c_[x, y, w, h]


def _dataset(rng, freq, p, height, width, ann_img, ann_cat, ann_box, first_ann, segm):
    """The LVIS-format dataset dict: images with negative and not-exhaustive categories."""
    num_classes, images = len(p), []
    for i in range(len(height)):
        present = np.unique(ann_cat[first_ann[i]:first_ann[i + 1]])
        neg = np.setdiff1d(rng.choice(num_classes, 8, p=p), present)
        not_exhaustive = present[rng.random(len(present)) < 0.1] + 1
        images.append(dict(id=i + 1, height=int(height[i]), width=int(width[i]),
                           neg_category_ids=(neg + 1).tolist(),
                           not_exhaustive_category_ids=not_exhaustive.tolist()))
    w, h = ann_box[:, 2], ann_box[:, 3]
    annotations = [dict(id=j + 1, image_id=int(ann_img[j]) + 1, category_id=int(ann_cat[j]) + 1,
                        bbox=ann_box[j].tolist(), area=float(w[j] * h[j] * (0.875 if segm else 1)),
                        segmentation=[octagon(*ann_box[j].tolist())]) for j in range(len(ann_img))]
    categories = [dict(id=k + 1, name=f"class_{k}", frequency=str(freq[k]))
                  for k in range(num_classes)]
    return dict(images=images, annotations=annotations, categories=categories)


def _detections(rng, dets_per_image, p, height, width, ann_img, ann_cat, ann_box, first_ann):
    """(image index, category id, XYWH box, score) of each detection, grouped by image: ~2.5
    jittered copies per object (20% with a wrong class), the rest random boxes whose classes
    come from the image (30%) or the class prior (70%, mostly dropped by lvis-api)."""
    num_images, num_classes = len(height), len(p)
    w, h = ann_box[:, 2], ann_box[:, 3]
    copies = rng.poisson(2.5, len(ann_img))
    src = np.repeat(np.arange(len(ann_img)), copies)
    near_box = ann_box[src] + rng.normal(0, 0.08, (len(src), 4)) * np.c_[w, h, w, h][src]
    near_box[:, 2:] = np.abs(near_box[:, 2:])
    near_cat = np.where(rng.random(len(src)) < 0.8, ann_cat[src],
                        rng.choice(num_classes, len(src), p=p))
    near_img = ann_img[src]
    keep = np.r_[0, np.flatnonzero(np.diff(near_img)) + 1]  # cap the copies at dets_per_image
    rank = np.arange(len(near_img)) - np.repeat(keep, np.diff(np.r_[keep, len(near_img)]))
    ok = rank < dets_per_image
    near_img, near_cat, near_box = near_img[ok], near_cat[ok], near_box[ok]
    num_random = dets_per_image - np.bincount(near_img, minlength=num_images)
    rand_img = np.repeat(np.arange(num_images), num_random)
    rand_side = np.exp(rng.uniform(np.log(6), np.log(300), len(rand_img)))
    rand_box = np.c_[rng.random(len(rand_img)) * width[rand_img] * 0.8,
                     rng.random(len(rand_img)) * height[rand_img] * 0.8, rand_side,
                     rand_side * np.exp(rng.normal(0, 0.4, len(rand_img)))]
    count = first_ann[rand_img + 1] - first_ann[rand_img]
    from_image = (rng.random(len(rand_img)) < 0.3) & (count > 0)
    some_ann = first_ann[rand_img] + (rng.random(len(rand_img)) * np.maximum(count, 1)).astype(int)
    rand_cat = np.where(from_image, ann_cat[np.minimum(some_ann, len(ann_cat) - 1)],
                        rng.choice(num_classes, len(rand_img), p=p))
    det_score = np.r_[rng.uniform(0.2, 1, len(near_img)), rng.uniform(0, 0.6, len(rand_img))]
    return (np.r_[near_img, rand_img], np.r_[near_cat, rand_cat] + 1,
            np.r_[near_box, rand_box].round(2), det_score.round(3))


def _columnar_results(det_img, det_cat, det_box, det_score, height, width, segm):
    results = dict(image_id=det_img + 1, category_id=det_cat, score=det_score)
    if not segm:
        results["bbox"] = det_box
        return results
    per_image = []  # as LTLVISEvaluator keeps masks: one RLEColumn per image, then joined
    bounds = np.searchsorted(det_img, np.arange(len(height) + 1))
    for i, box in enumerate(np.split(det_box, bounds[1:-1])):
        rles = mask_utils.frPyObjects([octagon(*b) for b in box.tolist()],
                                      int(height[i]), int(width[i]))
        per_image.append(RLEColumn.from_counts([rle["counts"] for rle in rles],
                                               np.tile([height[i], width[i]], (len(rles), 1))))
    results["segmentation"] = RLEColumn.concatenate(per_image)
    return results


def _result_dicts(det_img, det_cat, det_box, det_score, height, width, segm):
    num_images = len(height)
    image_id = list(range(1, num_images + 1))  # one int object per image, as detectron2 makes
    det_img, det_cat, det_score = det_img.tolist(), det_cat.tolist(), det_score.tolist()
    if not segm:
        return [dict(image_id=image_id[i], category_id=c, bbox=b, score=s)
                for i, c, b, s in zip(det_img, det_cat, det_box.tolist(), det_score)]
    results = []
    bounds = np.searchsorted(det_img, np.arange(num_images + 1))
    for i in range(num_images):
        lo, hi = bounds[i], bounds[i + 1]
        rles = mask_utils.frPyObjects([octagon(*b) for b in det_box[lo:hi].tolist()],
                                      int(height[i]), int(width[i]))
        for j, rle in zip(range(lo, hi), rles):
            rle["counts"] = rle["counts"].decode("ascii")
            results.append(dict(image_id=image_id[i], category_id=det_cat[j], segmentation=rle,
                                score=det_score[j]))
    return results


def first_images(dataset, results, num_images):
    subset = dict(dataset, images=[img for img in dataset["images"] if img["id"] <= num_images],
                  annotations=[a for a in dataset["annotations"] if a["image_id"] <= num_images])
    if isinstance(results, dict):
        rows = np.flatnonzero(results["image_id"] <= num_images)
        return subset, {k: v[rows] if isinstance(v, np.ndarray) else v.take(rows)
                        for k, v in results.items()}
    return subset, [r for r in results if r["image_id"] <= num_images]


def memory_status(field):
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))
    except (OSError, StopIteration):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(args):
    libraries = memory_status("VmRSS")  # interpreter, numpy, torch and detectron2 via lt_d2
    columnar = args.worker == "fast" and args.input == "columns"
    dataset, results = make_lvis_like(args.images, args.classes, args.dets_per_image, args.seed,
                                      args.iou_type == "segm", columnar)
    if args.subset:
        dataset, results = first_images(dataset, results, args.subset)
    warm_up = 0.0
    if args.worker == "fast":  # numba loads its compiled kernels on the first call of a process
        start = time.perf_counter()
        evaluate_lvis(*make_lvis_like(3, 10, 5, args.seed, args.iou_type == "segm", columnar),
                      args.iou_type)
        warm_up = time.perf_counter() - start
    gc.collect()
    input_rss = memory_status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM: the peak below is the evaluation's, input included
    except OSError:
        pass
    start = time.perf_counter()
    if args.worker == "lvis-api":
        from lvis import LVIS, LVISEval, LVISResults

        gt = LVIS.__new__(LVIS)
        gt.logger, gt.dataset = __import__("logging").getLogger("lvis"), dataset
        gt._create_index()
        evaluator = LVISEval(gt, LVISResults(gt, results), args.iou_type)
        evaluator.run()
        metrics = {k: float(v) for k, v in evaluator.results.items()}
    else:
        metrics = dict(evaluate_lvis(dataset, results, args.iou_type)[0])
    seconds = time.perf_counter() - start
    print(json.dumps(dict(seconds=seconds, warm_up=warm_up, peak=memory_status("VmHWM"),
                          input=input_rss, libraries=libraries, metrics=metrics,
                          images=len(dataset["images"]),
                          annotations=len(dataset["annotations"]),
                          detections=len(results["score"] if columnar else results))))


def run_worker(args, backend, subset):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", backend, "--subset", str(subset),
           "--images", str(args.images), "--classes", str(args.classes), "--seed", str(args.seed),
           "--dets-per-image", str(args.dets_per_image), "--iou-type", args.iou_type,
           "--input", args.input]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iou-type", default="bbox", choices=["bbox", "segm"])
    parser.add_argument("--images", type=int, help="19809 for bbox, 1000 for segm")
    parser.add_argument("--classes", type=int, default=1203)
    parser.add_argument("--dets-per-image", type=int, default=300)
    parser.add_argument("--api-images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input", default="columns", choices=["columns", "dicts"],
                        help="what the fast evaluator gets: NumPy columns, as LTLVISEvaluator "
                        "gives it (default), or lvis-format dicts, as from a json file; lvis-api "
                        "always gets dicts")
    parser.add_argument("--worker", choices=["fast", "lvis-api"], help=argparse.SUPPRESS)
    parser.add_argument("--subset", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.images is None:
        args.images = 19809 if args.iou_type == "bbox" else 1000
    if args.worker:
        return worker(args)
    api_images = min(args.api_images, args.images)
    gib = 2.0 ** 30
    full = run_worker(args, "fast", 0)
    print(f"{args.iou_type}: {full['images']} images, {args.classes} classes, "
          f"{full['annotations']} annotations, {full['detections']} detections")
    peak, before, libraries = full["peak"] / gib, full["input"] / gib, full["libraries"] / gib
    print(f"fast ({args.input}), full set: {full['seconds']:8.2f} s   peak {peak:.2f} GiB "
          f"(before evaluating: {before:.2f} GiB, of which {libraries:.2f} GiB "
          f"interpreter and libraries; evaluation adds {peak - before:.2f} GiB)")
    fast = run_worker(args, "fast", api_images)
    api = run_worker(args, "lvis-api", api_images)
    print(f"subset: first {api['images']} images, {api['annotations']} annotations, "
          f"{api['detections']} detections")
    print(f"fast ({args.input}), subset:   {fast['seconds']:8.2f} s   "
          f"peak {fast['peak'] / gib:.2f} GiB "
          f"(input {fast['input'] / gib:.2f} GiB)")
    print(f"lvis-api, subset:     {api['seconds']:8.2f} s   peak {api['peak'] / gib:.2f} GiB "
          f"(input {api['input'] / gib:.2f} GiB)")
    scale = full["images"] / api["images"]
    print(f"speed-up on the subset: {api['seconds'] / fast['seconds']:.1f}x")
    print(f"(not in the fast times: the first call of a process loads the compiled kernels, "
          f"{fast['warm_up']:.2f} s here; the first run after installing compiles them once)")
    if scale != 1:
        print(f"lvis-api, full set:   {api['seconds'] * scale:8.2f} s   EXTRAPOLATED linearly "
              f"(x{scale:.2f} images), not measured; speed-up vs that: "
              f"{api['seconds'] * scale / full['seconds']:.1f}x")
    diff = {k: abs(fast["metrics"][k] - api["metrics"][k]) for k in api["metrics"]}
    print("max |fast - lvis-api| over the subset's metrics: "
          f"{max(diff.values()):.3g} ({', '.join(f'{k} {v:.3g}' for k, v in diff.items())})")
    print("metrics (subset, lvis-api): "
          + ", ".join(f"{k} {v:.4f}" for k, v in api["metrics"].items()))
    print("metrics (full set, fast):   "
          + ", ".join(f"{k} {v:.4f}" for k, v in full["metrics"].items()))


if __name__ == "__main__":
    main()
