# Copyright (c) lt_d2 contributors.
"""Open Images Challenge detection metric (AP@0.5 IoU) with the EQLv2 AP1..AP5 groups.

The rules are those of the TF object detection API's ``oid_challenge_evaluation`` (the official
challenge metric, which the EQLv2 OpenImages numbers use):

* only classes verified in an image count there: its positive and negative image-level labels
  and the classes of its boxes; detections of other classes are dropped;
* ground-truth boxes are expanded to all ancestor classes (unless the json says they already
  are); image-level labels come expanded from the converter. Detections are scored as given,
  like the official tool; ``expand_detections=True`` also copies them to ancestor classes
  (as mmdetection's ``OpenImagesMetric`` does);
* per image and class, detections in decreasing score order are matched at IoU >= 0.5 to the
  non-group-of boxes (one true positive per box, the rest false positives). Detections left
  unmatched that lie inside a group-of box (intersection / detection area >= 0.5) are removed,
  and each such group-of box adds one true positive with the highest of their scores. Every box,
  group-of included, counts once in the number of ground-truth instances;
* AP is the area under the precision-recall curve with precision made monotone (the API's
  ``compute_average_precision``); classes without ground truth have no AP and are left out of
  the means. AP1..AP5 are the means over the ``frequency_quintile`` groups (1 = rarest).
"""
import csv
import json
import logging
import os
from collections import OrderedDict

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.file_io import PathManager
from tabulate import tabulate

from ..grouping import OPENIMAGES_NUM_QUANTILES, count_quantiles
from .distributed import gather_predictions
from .means import mean_of_defined

logger = logging.getLogger(__name__)

__all__ = ["OpenImagesEvaluator", "evaluate_openimages", "load_openimages_groundtruth",
           "tp_fp_single_class", "interpolated_average_precision", "write_submission_csv"]


def _intersection(a, b):
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    return np.prod(np.clip(rb - lt, 0, None), axis=2)


def _area(boxes):
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def tp_fp_single_class(det_boxes, det_scores, gt_boxes, gt_group_of, iou_thresh=0.5):
    """Scores and true-positive flags one image adds to one class (XYXY boxes)."""
    order = np.argsort(-det_scores, kind="stable")
    boxes, scores = det_boxes[order], det_scores[order]
    is_tp = np.zeros(len(scores), bool)
    single = gt_boxes[~gt_group_of]
    if len(single) and len(boxes):
        inter = _intersection(boxes, single)
        iou = inter / np.maximum(_area(boxes)[:, None] + _area(single)[None] - inter, 1e-12)
        best, taken = iou.argmax(1), np.zeros(len(single), bool)
        for i, g in enumerate(best):
            if iou[i, g] >= iou_thresh and not taken[g]:
                is_tp[i] = taken[g] = True
    group = gt_boxes[gt_group_of]
    if not len(group) or not len(boxes):
        return scores, is_tp
    ioa = _intersection(boxes, group) / np.maximum(_area(boxes), 1e-12)[:, None]
    best = ioa.argmax(1)
    in_group = ~is_tp & (ioa[np.arange(len(boxes)), best] >= iou_thresh)
    group_score, group_hit = np.zeros(len(group)), np.zeros(len(group), bool)
    np.maximum.at(group_score, best[in_group], scores[in_group])
    group_hit[best[in_group]] = True
    return (np.concatenate([scores[~in_group], group_score[group_hit]]),
            np.concatenate([is_tp[~in_group], np.ones(group_hit.sum(), bool)]))


def interpolated_average_precision(scores, is_tp, num_gt):
    """AP of one class, the area under the precision-recall curve with precision made monotone
    (VOC / Open Images style); NaN without ground truth, 0 without detections."""
    if num_gt == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.cumsum(np.asarray(is_tp)[order])
    precision = tp / np.arange(1, len(tp) + 1)
    recall = np.r_[0.0, tp / num_gt, 1.0]
    precision = np.maximum.accumulate(np.r_[0.0, precision, 0.0][::-1])[::-1]
    steps = np.nonzero(recall[1:] != recall[:-1])[0] + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def load_openimages_groundtruth(json_file):
    """Ground truth of a converted json, by contiguous class index (categories sorted by id).

    Returns ``(images, categories, ancestors)``: images maps image id to a dict with
    ``oid_id``, ``width``, ``height``, XYXY ``boxes``, ``classes``, ``group_of`` (boxes expanded
    to ancestors) and ``evaluatable`` (set of classes); ancestors[k] lists k's ancestors.
    """
    with PathManager.open(json_file) as f:
        data = json.load(f)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    index = {c["id"]: k for k, c in enumerate(categories)}
    ancestors = [[index[a] for a in c.get("ancestor_ids", []) if a in index] for c in categories]
    info = data.get("info", {})
    expand = not info.get("boxes_hierarchy_expanded", False)
    if info.get("stats_source") == "this split":
        logger.warning("%s was converted without --stats-from: its AP1..AP5 groups come from its "
                       "own boxes, not the training set's.", json_file)
    boxes = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        group_of = int(ann.get("isgroupof", ann.get("iscrowd", 0)))
        k = index[ann["category_id"]]
        for c in [k] + (ancestors[k] if expand else []):
            boxes[ann["image_id"]].append((x, y, x + w, y + h, c, group_of))
    images = {}
    for img in data["images"]:
        rows = np.array(boxes[img["id"]], np.float64).reshape(-1, 6)
        classes = rows[:, 4].astype(np.int64)
        labelled = [index[c] for c in img.get("pos_category_ids", []) + img.get(
            "neg_category_ids", []) if c in index]
        images[img["id"]] = {
            "oid_id": os.path.splitext(img["file_name"])[0], "width": img["width"],
            "height": img["height"], "boxes": rows[:, :4], "classes": classes,
            "group_of": rows[:, 5] > 0, "evaluatable": set(labelled) | set(classes.tolist())}
    return images, categories, ancestors


def evaluate_openimages(gt_images, predictions, num_classes, ancestors=None,
                        expand_detections=False, iou_thresh=0.5):
    """Per-class AP (K,), NaN where a class has no ground truth.

    ``predictions``: {image id: {"boxes": (N, 4) XYXY, "scores": (N,), "classes": (N,)}};
    images missing from it have no detections.
    """
    scores = [[] for _ in range(num_classes)]
    is_tp = [[] for _ in range(num_classes)]
    num_gt = np.zeros(num_classes, np.int64)
    for image_id, gt in gt_images.items():
        np.add.at(num_gt, gt["classes"], 1)
        pred = predictions.get(image_id)
        if pred is None or not len(pred["scores"]):
            continue
        det_boxes, det_scores = np.asarray(pred["boxes"], float), np.asarray(pred["scores"], float)
        det_classes = np.asarray(pred["classes"], np.int64)
        if expand_detections and ancestors is not None:
            copies = [(i, a) for i, k in enumerate(det_classes) for a in ancestors[k]]
            if copies:
                rows, extra = np.array([i for i, _ in copies]), np.array([a for _, a in copies])
                det_boxes = np.concatenate([det_boxes, det_boxes[rows]])
                det_scores = np.concatenate([det_scores, det_scores[rows]])
                det_classes = np.concatenate([det_classes, extra])
        for k in set(det_classes.tolist()) & gt["evaluatable"]:
            det = det_classes == k
            gt_k = gt["classes"] == k
            s, t = tp_fp_single_class(det_boxes[det], det_scores[det], gt["boxes"][gt_k],
                                      gt["group_of"][gt_k], iou_thresh)
            scores[k].append(s)
            is_tp[k].append(t)
    return np.array([
        interpolated_average_precision(
            np.concatenate(scores[k]) if scores[k] else np.zeros(0),
            np.concatenate(is_tp[k]) if is_tp[k] else np.zeros(0, bool), num_gt[k])
        for k in range(num_classes)])


def category_quintiles(categories, gt_images=None):
    """Frequency quintile (1..5) per class: the json's ``frequency_quintile`` when every category
    has one, else computed from ``instance_count`` or the ground truth (with a warning: these
    are the evaluation split's counts, not the training set's)."""
    if all("frequency_quintile" in c for c in categories):
        return np.array([c["frequency_quintile"] for c in categories])
    logger.warning("No frequency_quintile in the categories; AP1..AP5 use this split's counts.")
    if all("instance_count" in c for c in categories):
        return count_quantiles([c["instance_count"] for c in categories])
    counts = np.zeros(len(categories), np.int64)
    for gt in (gt_images or {}).values():
        np.add.at(counts, gt["classes"], 1)
    return count_quantiles(counts)


def openimages_summary(ap, groups):
    """``{"mAP": ..., "AP1": ..., "AP5": ...}`` in percent (NaN where a group has no AP) from
    per-class AP (0-1, NaN: no ground truth) and each class's quintile ``groups``."""
    ap = np.asarray(ap, np.float64)
    results = OrderedDict(mAP=mean_of_defined(ap) * 100)
    for g in range(1, OPENIMAGES_NUM_QUANTILES + 1):
        results[f"AP{g}"] = mean_of_defined(ap[np.asarray(groups) == g]) * 100
    return results


def write_submission_csv(path, predictions, gt_images, labels):
    """The challenge submission: ``ImageId,PredictionString`` with "LabelName Score XMin YMin XMax
    YMax ..." (normalised), one row per image, images without detections included."""
    with PathManager.open(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["ImageId", "PredictionString"])
        for image_id, gt in sorted(gt_images.items(), key=lambda item: item[1]["oid_id"]):
            pred, parts = predictions.get(image_id), []
            if pred is not None:
                scale = np.array([gt["width"], gt["height"]] * 2, np.float64)
                norm = np.clip(np.asarray(pred["boxes"], np.float64) / scale, 0.0, 1.0)
                for box, score, k in zip(norm, pred["scores"], pred["classes"]):
                    coords = " ".join(f"{v:.6f}" for v in box)
                    parts.append(f"{labels[int(k)]} {score:.6f} {coords}")
            writer.writerow([gt["oid_id"], " ".join(parts)])


class OpenImagesEvaluator(DatasetEvaluator):
    """Open Images challenge AP@0.5 of ``instances`` outputs on a converted dataset.

    Returns ``{"bbox": {"mAP", "AP1".."AP5", "AP-<class>"...}}`` in percent and, with an
    ``output_dir``, writes ``openimages_submission.csv`` there. The AP1..AP5 groups are the json's
    ``frequency_quintile``, or the quintiles of ``train_instance_count`` (K,) when given (e.g.
    ``get_class_stats(cfg.DATASETS.TRAIN).instance_count``).
    """

    def __init__(self, dataset_name, output_dir=None, distributed=True, *,
                 train_instance_count=None, expand_detections=False, iou_thresh=0.5):
        self._train_instance_count = train_instance_count
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._expand_detections = expand_detections
        self._iou_thresh = iou_thresh
        self._json_file = MetadataCatalog.get(dataset_name).get("json_file", None)
        if self._json_file is None:
            raise ValueError(f"Dataset '{dataset_name}' has no json_file in its metadata; "
                             "register it with lt_d2.data.openimages.register_openimages.")
        self._predictions = []

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if "instances" not in out:
                continue
            instances = out["instances"].to("cpu")
            self._predictions.append({
                "image_id": inp["image_id"],
                "boxes": instances.pred_boxes.tensor.numpy().astype(np.float32),
                "scores": instances.scores.numpy().astype(np.float32),
                "classes": instances.pred_classes.numpy().astype(np.int64)})

    def evaluate(self):
        predictions = self._predictions
        if self._distributed:
            predictions = gather_predictions(predictions)
            if predictions is None:  # not the main process
                return {}
        if not predictions:
            logger.warning("[OpenImagesEvaluator] Did not receive valid predictions.")
            return {}
        gt_images, categories, ancestors = load_openimages_groundtruth(self._json_file)
        by_image = {p["image_id"]: p for p in predictions}
        unknown = set(by_image) - set(gt_images)
        if unknown:
            logger.warning("%d predicted images are not in %s; ignored.", len(unknown),
                           self._json_file)
        labels = [c.get("label", c["name"]) for c in categories]
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            path = os.path.join(self._output_dir, "openimages_submission.csv")
            write_submission_csv(path, by_image, gt_images, labels)
            logger.info("Wrote the challenge submission CSV to %s", path)
        ap = evaluate_openimages(gt_images, by_image, len(categories), ancestors,
                                 self._expand_detections, self._iou_thresh)
        if self._train_instance_count is not None:
            if len(self._train_instance_count) != len(categories):
                raise ValueError(f"train_instance_count has {len(self._train_instance_count)} "
                                 f"classes, {self._json_file} {len(categories)}.")
            groups = count_quantiles(self._train_instance_count)
        else:
            groups = category_quintiles(categories, gt_images)
        results = openimages_summary(ap, groups)
        logger.info("Open Images AP@0.5 on %s (AP1 = rarest fifth of the classes):\n%s",
                    self._dataset_name, tabulate([list(results.values())],
                                                 headers=list(results), floatfmt=".2f"))
        names = [c["name"] for c in categories]
        for k, name in enumerate(names):
            # display names repeat in Open Images (two "Bench" classes): add the label there
            key = f"AP-{name}" if names.count(name) == 1 else f"AP-{name} ({labels[k]})"
            results[key] = float(ap[k] * 100)
        return OrderedDict(bbox=results)
