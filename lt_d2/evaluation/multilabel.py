# Copyright (c) lt_d2 contributors.
"""Multi-label classification scores: mAP over classes and over head / medium / tail classes.

Average precision of a class is scikit-learn's ``average_precision_score``: sum over distinct
score thresholds of (recall step) x precision, ties counted together. Classes without a positive
test image have no AP and are left out of every mean (and named in the log).
"""
import json
import logging
import os
from collections import OrderedDict

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from tabulate import tabulate

from ..grouping import SPLIT_HEAD_MIN_IMAGES, SPLIT_TAIL_BELOW_IMAGES, head_medium_tail
from .distributed import gather_predictions
from .means import mean_of_defined

logger = logging.getLogger(__name__)

__all__ = ["MultiLabelEvaluator", "stepwise_average_precision", "multilabel_scores"]


def stepwise_average_precision(scores, targets):
    """AP of one class, the sum of recall steps x precision (no interpolation, as scikit-learn's
    ``average_precision_score``): ``scores`` (N,) and 0/1 ``targets`` (N,). NaN without
    positives."""
    scores, targets = np.asarray(scores, np.float64), np.asarray(targets) > 0
    num_pos = targets.sum()
    if num_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    scores, targets = scores[order], targets[order]
    # the last position of each run of equal scores is one threshold of the PR curve
    ends = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tp = np.cumsum(targets)[ends]
    precision, recall = tp / (ends + 1), tp / num_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def multilabel_scores(scores, targets, class_image_count=None, head=SPLIT_HEAD_MIN_IMAGES,
                      tail=SPLIT_TAIL_BELOW_IMAGES):
    """Per-class AP and the means: ``{"mAP": ..., "mAP_head": ..., ...}`` in percent.

    Args:
        scores, targets: (N, K) arrays.
        class_image_count: (K,) training images per class; gives the head (>= ``head``),
            medium and tail (< ``tail``) means. None: only the overall mAP.
    Returns:
        (results dict, per-class AP array (K,) in percent, NaN where undefined).
    """
    scores, targets = np.asarray(scores), np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (N, K).")
    ap = np.array([stepwise_average_precision(scores[:, k], targets[:, k])
                   for k in range(scores.shape[1])]) * 100
    results = OrderedDict(mAP=mean_of_defined(ap))
    if class_image_count is not None:
        for group, idx in head_medium_tail(class_image_count, head=head, tail=tail).items():
            results[f"mAP_{group}"] = mean_of_defined(ap[np.asarray(idx, dtype=np.int64)])
    return results, ap


class MultiLabelEvaluator(DatasetEvaluator):
    """Collects each image's ``"scores"`` and its ground-truth ``"labels"``; on all processes
    gathers them, and the main process computes :func:`multilabel_scores`, logs a table and
    writes ``multilabel_ap.json`` (per-class AP) to ``output_dir``.

    Args:
        dataset_name: a registered multi-label dataset (for class names).
        class_image_count: (K,) training images per class (head / medium / tail), or None.
    """

    def __init__(self, dataset_name, class_image_count=None, output_dir=None, distributed=True):
        self._dataset_name = dataset_name
        self._class_names = MetadataCatalog.get(dataset_name).get("thing_classes", None)
        self._class_image_count = (None if class_image_count is None
                                   else np.asarray(class_image_count))
        self._output_dir = output_dir
        self._distributed = distributed
        self.reset()

    def reset(self):
        self._scores, self._targets = [], []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if "labels" not in inp:
                raise ValueError("MultiLabelEvaluator needs 'labels' in each input; evaluate "
                                 "with MultiLabelDatasetMapper.")
            self._scores.append(out["scores"].detach().to("cpu", torch.float32))
            self._targets.append(inp["labels"].to("cpu"))

    def evaluate(self):
        scores, targets = self._scores, self._targets
        if self._distributed:
            scores, targets = gather_predictions(scores), gather_predictions(targets)
            if scores is None:  # not the main process
                return {}
        if not scores:
            logger.warning("[MultiLabelEvaluator] no predictions for '%s'.", self._dataset_name)
            return {}
        scores, targets = torch.stack(scores).numpy(), torch.stack(targets).numpy()
        results, ap = multilabel_scores(scores, targets, self._class_image_count)
        undefined = np.nonzero(np.isnan(ap))[0]
        if len(undefined):
            logger.warning("%d classes have no positive image in '%s' and no AP: %s",
                           len(undefined), self._dataset_name, self._names(undefined)[:20])
        self._log_table(results, len(scores))
        if self._output_dir and comm.is_main_process():
            PathManager.mkdirs(self._output_dir)
            path = os.path.join(self._output_dir, "multilabel_ap.json")
            with PathManager.open(path, "w") as f:
                json.dump({"results": results, "per_class_ap": dict(
                    zip(self._names(range(len(ap))), [None if np.isnan(v) else v for v in ap]))},
                    f, indent=1)
        return OrderedDict(multilabel=results)

    def _names(self, indices):
        names = self._class_names
        return [names[i] if names is not None and i < len(names) else str(i) for i in indices]

    def _log_table(self, results, num_images):
        rows = [[k, f"{v:.2f}"] for k, v in results.items()]
        if self._class_image_count is not None:
            counts = self._class_image_count
            sizes = {"mAP": len(counts), **{f"mAP_{group}": len(idx)
                                            for group, idx in head_medium_tail(counts).items()}}
            rows = [r + [sizes[r[0]]] for r in rows]
        table = tabulate(rows, headers=["metric", "value", "classes"][:len(rows[0])],
                         tablefmt="pipe")
        logger.info("Multi-label evaluation of '%s' (%d images):\n%s", self._dataset_name,
                    num_images, table)
