# Copyright (c) lt_d2 contributors.
"""Tune the score calibration of a trained detector without re-running it for each value.

:func:`collect_raw_scores` runs the model once over a dataset and keeps, per image, what its
post-processing starts from: the (R, K+1) scores (background included, before any calibration)
and the (R, 4K) class-specific boxes, plus the score threshold, NMS threshold and per-image cap.
:func:`sweep_calibration` then, for each value of the exponent, calibrates the scores, re-runs
detectron2's post-processing (threshold -> NMS -> top-k -> rescaling to the image size) and
scores the detections with the fast LVIS evaluation. Exponent 0 is the identity, so its row is
the model's plain evaluation, bit for bit.

Memory: the cache is float32, 4 * R * (5K + 1) bytes per image (R proposals, K classes): ~96 KB
on the synthetic set (R = 100, K = 48), ~24 MB on LVIS (R = 1000, K = 1203), where a few
hundred to a thousand images (``max_images``) fit in memory. float16 would halve it but change
the scores and boxes, and with them the exponent-0 row, so it is not offered. Only boxes are
evaluated (a mask head would have to run again on each value's detections).
"""
import contextlib
import itertools
import logging
import time

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.roi_heads import cascade_rcnn
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image

from ..modeling import box_predictor, roi_heads
from ..modeling.calibration import EXPONENT_KEYS, calibrate_probs, calibration_weights
from .lvis_evaluation import (
    REPORTED_METRICS,
    _concat_columns,
    _instances_to_columns,
    to_dataset_category_ids,
)
from .lvis_fast import evaluate_lvis

logger = logging.getLogger(__name__)

# the modules whose fast_rcnn_inference lt_d2's ROI heads call at test time
_INFERENCE_MODULES = (box_predictor, roi_heads, cascade_rcnn)


@contextlib.contextmanager
def _recording_postprocess_inputs(calls):
    """Record the arguments of every ``fast_rcnn_inference`` call of lt_d2's ROI heads."""
    real = {m: m.fast_rcnn_inference for m in _INFERENCE_MODULES}

    def recording(module):
        def fast_rcnn_inference(boxes, scores, image_shapes, *args):
            calls.append((boxes, scores, image_shapes, args))
            return real[module](boxes, scores, image_shapes, *args)
        return fast_rcnn_inference

    try:
        for module in _INFERENCE_MODULES:
            module.fast_rcnn_inference = recording(module)
        yield
    finally:
        for module, function in real.items():
            module.fast_rcnn_inference = function


def score_predictor(model):
    """The predictor whose scores the model's inference post-processes, checked."""
    heads = model.roi_heads
    predictor = heads.box_predictor[-1] if isinstance(heads.box_predictor, torch.nn.ModuleList) \
        else heads.box_predictor
    if not isinstance(predictor, box_predictor.LTFastRCNNOutputLayers):
        raise TypeError("Calibration tuning needs lt_d2's ROI heads (MODEL.ROI_HEADS.NAME "
                        "LTROIHeads or LTCascadeROIHeads).")
    return predictor


def collect_raw_scores(model, data_loader, max_images=None):
    """Run ``model`` (in eval mode, built with ``TEST.LT.CALIBRATION.METHOD none``) over
    ``data_loader``; return (records, post-processing parameters (score threshold, NMS
    threshold, top-k)). Each record: image_id, height, width, image_size, boxes (R, 4K) and
    scores (R, K+1), float32 on the CPU."""
    predictor = score_predictor(model)
    if predictor.calibrated:
        raise ValueError("collect_raw_scores needs the uncalibrated scores: build the model "
                         "with TEST.LT.CALIBRATION.METHOD none.")
    records, params = [], None
    model.eval()
    with torch.no_grad():
        for inputs in itertools.islice(data_loader, max_images):
            calls = []
            with _recording_postprocess_inputs(calls):
                model(inputs)
            if len(calls) != 1:
                raise RuntimeError(f"expected one post-processing call per batch, got {len(calls)}")
            boxes, scores, image_shapes, params = calls[0]
            for inp, b, s, shape in zip(inputs, boxes, scores, image_shapes):
                records.append(dict(
                    image_id=inp["image_id"], height=inp.get("height", shape[0]),
                    width=inp.get("width", shape[1]), image_size=tuple(shape),
                    boxes=b.detach().cpu().clone(), scores=s.detach().cpu().clone()))
            if max_images is not None and len(records) >= max_images:
                break
    return records[:max_images] if max_images is not None else records, params


def cache_bytes(records):
    return sum(r["boxes"].numel() * 4 + r["scores"].numel() * 4 for r in records)


def detections(records, class_weights, params):
    """Per-image detections (Instances at the image size) after calibrating the cached scores
    with ``class_weights`` (None: uncalibrated) and post-processing them."""
    out = []
    for r in records:
        scores = r["scores"] if class_weights is None else calibrate_probs(r["scores"],
                                                                           class_weights)
        instances, _ = fast_rcnn_inference_single_image(r["boxes"], scores, r["image_size"],
                                                        *params)
        out.append(detector_postprocess(instances, r["height"], r["width"]))
    return out


def lvis_box_metrics(dataset_name, records, per_image, gt_dataset=None, max_dets=300):
    """detectron2-style bbox metrics (percent) of per-image detections, as lt_d2's LVIS
    evaluator computes them (same columns, same fast evaluation)."""
    meta = MetadataCatalog.get(dataset_name)
    columns = _concat_columns([_instances_to_columns(inst, r["image_id"])
                               for r, inst in zip(records, per_image)])
    to_dataset_category_ids(columns, meta)
    if not len(columns["score"]):
        return {metric: float("nan") for metric in REPORTED_METRICS}
    metrics, _ = evaluate_lvis(gt_dataset if gt_dataset is not None else meta.json_file,
                               columns, "bbox", max_dets)
    return {metric: float(metrics[metric] * 100) for metric in REPORTED_METRICS}


def restrict_to_images(gt_dataset, image_ids):
    """The LVIS json dict with only ``image_ids`` and their annotations (a ``max_images``
    subset is scored against its own ground truth, not the whole set's)."""
    keep = set(image_ids)
    if keep >= {img["id"] for img in gt_dataset["images"]}:
        return gt_dataset
    return dict(gt_dataset, images=[img for img in gt_dataset["images"] if img["id"] in keep],
                annotations=[a for a in gt_dataset["annotations"] if a["image_id"] in keep])


def sweep_calibration(records, params, dataset_name, method, counts, values):
    """[(value, metrics)] for each exponent in ``values`` of calibration ``method`` with the
    training ``counts`` (K,), evaluated on the cached ``records`` of ``dataset_name``."""
    import json

    with open(MetadataCatalog.get(dataset_name).json_file) as f:
        gt_dataset = restrict_to_images(json.load(f), [r["image_id"] for r in records])
    rows = []
    for value in values:
        start = time.perf_counter()
        weights = calibration_weights(method, counts, value)
        metrics = lvis_box_metrics(dataset_name, records, detections(records, weights, params),
                                   gt_dataset)
        logger.info("%s %g: AP %.2f (%.2f s)", method, value, metrics["AP"],
                    time.perf_counter() - start)
        rows.append((float(value), metrics))
    return rows


def best_row(rows, metric="AP"):
    """The row with the highest ``metric`` (NaN never wins; ties: the first, i.e. the
    smallest-change value when ``values`` is sorted)."""
    scored = [row for row in rows if np.isfinite(row[1][metric])]
    if not scored:
        raise ValueError(f"No value gave a defined {metric} (no detections at all?).")
    return max(scored, key=lambda row: row[1][metric])


def format_table(rows, method, metrics=("AP", "APr", "APc", "APf")):
    name = EXPONENT_KEYS[method].lower()
    lines = [f"| {name} | " + " | ".join(metrics) + " |",
             "|---:|" + "---:|" * len(metrics)]
    for value, m in rows:
        lines.append(f"| {value:g} | " + " | ".join(f"{m[k]:.2f}" for k in metrics) + " |")
    return "\n".join(lines)
