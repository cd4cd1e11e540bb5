# Copyright (c) lt_d2 contributors.
"""Fixed AP (Dave et al. 2021, "Evaluating Large-Vocabulary Object Detectors: The Devil is in
the Details"): AP without LVIS's 300-detections-per-image cap, which otherwise lets a detector
trade rare-class detections against frequent-class ones inside each image. Instead each class
keeps its ``topk`` (10,000) highest-scoring detections over the whole dataset.

* :class:`PerClassTopK` accumulates detections with memory bounded by classes x k;
* :func:`fixed_ap` computes Fixed AP of a list of LVIS results with lvis-api;
* :class:`FixedAPEvaluator` is the detectron2 evaluator (box AP, task ``"bbox_fixed"``).

The detector must emit many detections per image for the metric to mean anything. With the
standard R-CNN box head set ``TEST.DETECTIONS_PER_IMAGE -1`` (detectron2's
``fast_rcnn_inference`` keeps every detection after NMS when it is negative; 0 would keep none)
or a large number such as 10000, and ``MODEL.ROI_HEADS.SCORE_THRESH_TEST`` low (e.g. 0.0001).
RetinaNet/FCOS slice ``keep[:DETECTIONS_PER_IMAGE]``, so there use a large positive value:
-1 would drop the last detection.
"""
import json
import logging
import os

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..file_io import atomic_write
from ..grouping import LVIS_FREQUENCIES
from .longtail_report import group_aps, per_class_ap

logger = logging.getLogger(__name__)


def _top_k_indices(scores, image_ids, positions, k):
    """Indices of the k best detections of one class: highest score first; among equal scores
    the smaller image id, then the earlier position within the image wins."""
    n = len(scores)
    if n <= k:
        return np.arange(n)
    kth_score = np.partition(scores, n - k)[n - k]  # O(n), no full sort
    above = np.flatnonzero(scores > kth_score)
    tied = np.flatnonzero(scores == kth_score)
    tied = tied[np.lexsort((positions[tied], image_ids[tied]))[:k - len(above)]]
    return np.concatenate([above, tied])


class PerClassTopK:
    """The ``k`` highest-scoring detections of every class, over all images added.

    Tie-breaking is deterministic and independent of the order images are added or
    accumulators merged: among equal scores, the detection of the smaller image id is kept,
    then the one earlier in its image's ``add`` call. Detections with a non-finite score are
    dropped. Incoming rows wait in a buffer of ``flush_rows`` rows; a class is pruned back to
    ``k`` when it holds more than ``2 k``, so memory stays O(classes x k + flush_rows).
    """

    def __init__(self, k=10000, flush_rows=1 << 18):
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        self.k = int(k)
        self.flush_rows = int(flush_rows)
        self._pending = []  # column tuples (classes, image_ids, positions, boxes, scores)
        self._pending_rows = 0
        self._chunks = {}  # class -> list of (image_ids, positions, boxes, scores)
        self._counts = {}  # class -> rows held in its chunks

    def add(self, image_id, boxes, scores, classes):
        """Add the detections of one image: ``boxes`` (N, 4) XYWH, ``scores`` (N,),
        ``classes`` (N,) category ids (as they should appear in the results)."""
        n = len(scores)
        self.add_many(np.full(n, image_id, np.int64), boxes, scores, classes)

    def add_many(self, image_ids, boxes, scores, classes):
        """Add detections of any images; ``image_ids`` (N,). Ties within an image are broken
        by the order of its detections in this call."""
        scores = np.asarray(scores, np.float64).reshape(-1)
        finite = np.isfinite(scores)
        columns = (np.asarray(classes, np.int64).reshape(-1),
                   np.asarray(image_ids, np.int64).reshape(-1),
                   np.arange(len(scores), dtype=np.int64),
                   np.asarray(boxes, np.float64).reshape(-1, 4), scores)
        if not all(len(c) == len(scores) for c in columns):
            raise ValueError("boxes, scores, classes and image ids must have the same length")
        if not finite.all():
            columns = tuple(c[finite] for c in columns)
        if len(columns[0]) == 0:
            return
        self._pending.append(columns)
        self._pending_rows += len(columns[0])
        if self._pending_rows >= self.flush_rows:
            self._flush()

    def _append(self, cls, chunk):
        self._chunks.setdefault(cls, []).append(chunk)
        self._counts[cls] = self._counts.get(cls, 0) + len(chunk[0])
        if self._counts[cls] > 2 * self.k:
            self._prune(cls)

    def _prune(self, cls):
        image_ids, positions, boxes, scores = (
            np.concatenate(c) for c in zip(*self._chunks[cls]))
        keep = _top_k_indices(scores, image_ids, positions, self.k)
        self._chunks[cls] = [(image_ids[keep], positions[keep], boxes[keep], scores[keep])]
        self._counts[cls] = len(keep)

    def _flush(self):
        if not self._pending:
            return
        classes, image_ids, positions, boxes, scores = (
            np.concatenate(c) for c in zip(*self._pending))
        self._pending, self._pending_rows = [], 0
        # one stable sort groups the buffer by class; a Python loop runs per class, not per row
        order = np.argsort(classes, kind="stable")
        unique, starts = np.unique(classes[order], return_index=True)
        for cls, rows in zip(unique.tolist(), np.split(order, starts[1:])):
            self._append(cls, (image_ids[rows], positions[rows], boxes[rows], scores[rows]))

    def compact(self):
        """Reduce to exactly the top ``k`` per class (e.g. before pickling for a gather)."""
        self._flush()
        for cls in list(self._chunks):
            if self._counts[cls] > self.k or len(self._chunks[cls]) > 1:
                self._prune(cls)
        return self

    def merge(self, other):
        """Add everything ``other`` holds (another process's accumulator); returns self."""
        if other.k != self.k:
            raise ValueError(f"Cannot merge top-{other.k} into top-{self.k}")
        other.compact()
        for cls, chunks in other._chunks.items():
            for chunk in chunks:
                self._append(cls, chunk)
        return self

    def __len__(self):
        self.compact()
        return sum(self._counts.values())

    def results(self):
        """LVIS result dicts (image_id, category_id, bbox XYWH, score) of the kept detections,
        by category id, then score (descending), image id and position."""
        self.compact()
        results = []
        for cls in sorted(self._chunks):
            image_ids, positions, boxes, scores = self._chunks[cls][0]
            order = np.lexsort((positions, image_ids, -scores))
            results.extend(
                {"image_id": image_id, "category_id": cls, "bbox": box, "score": score}
                for image_id, box, score in zip(image_ids[order].tolist(),
                                                boxes[order].tolist(), scores[order].tolist()))
        return results


def top_k_per_class(results, topk=10000):
    """The ``topk`` highest-scoring of a list of LVIS box results per category (ties: smaller
    image id, then earlier in the list)."""
    accumulator = PerClassTopK(topk)
    if results:
        accumulator.add_many([r["image_id"] for r in results], [r["bbox"] for r in results],
                             [r["score"] for r in results], [r["category_id"] for r in results])
    return accumulator.results()


def _as_lvis(lvis_gt):
    if isinstance(lvis_gt, str):
        from lvis import LVIS

        return LVIS(lvis_gt)
    return lvis_gt


def per_class_fixed_ap(lvis_gt, kept_results, evaluate=None):
    """Box AP per class of already top-k-filtered results, with no per-image cap.

    Returns (per-class AP (K,) in sorted category-id order, NaN for classes without ground
    truth; frequency group (K,)). ``evaluate``, if given, replaces lvis-api: a callable
    ``(lvis_gt, results, iou_type, max_dets) -> (metrics, precision [T, R, K, A])`` that must
    treat ``max_dets=-1`` as "no cap" (the signature of ``lvis_fast.evaluate_lvis``).
    """
    lvis_gt = _as_lvis(lvis_gt)
    cat_ids = sorted(lvis_gt.get_cat_ids())
    frequency = np.array([c["frequency"] for c in lvis_gt.load_cats(cat_ids)])
    if not kept_results:  # lvis-api cannot read an empty result list
        return np.full(len(cat_ids), np.nan), frequency
    if evaluate is not None:
        _, precision = evaluate(lvis_gt, kept_results, "bbox", -1)
    else:
        from lvis import LVISEval, LVISResults

        # LVISResults caps detections per image unless max_dets < 0; LVISEval's own
        # params.max_dets only names the AR metric, set for consistency
        lvis_dt = LVISResults(lvis_gt, kept_results, max_dets=-1)
        lvis_eval = LVISEval(lvis_gt, lvis_dt, "bbox")
        lvis_eval.params.max_dets = -1
        lvis_eval.evaluate()
        lvis_eval.accumulate()
        precision = lvis_eval.eval["precision"]
    return per_class_ap(precision), frequency


def fixed_ap_metrics(per_class, frequency):
    """{"APfixed", "APfixed_r", "APfixed_c", "APfixed_f"} from per-class APs (NaN: no data)."""
    groups = group_aps(per_class, frequency)
    return {"APfixed": groups["AP"],
            **{f"APfixed_{g}": groups["AP" + g] for g in LVIS_FREQUENCIES}}


def fixed_ap(lvis_gt, results, topk=10000, evaluate=None):
    """Fixed box AP of LVIS ``results`` (list of dicts with image_id, category_id, bbox XYWH,
    score; any number per image) against ``lvis_gt`` (an ``lvis.LVIS`` or a json path).

    Keeps the ``topk`` best detections of each class over the dataset and evaluates them with
    no per-image cap. Returns :func:`fixed_ap_metrics`'s dict, in lvis-api's 0-1 units.
    """
    per_class, frequency = per_class_fixed_ap(lvis_gt, top_k_per_class(results, topk), evaluate)
    return fixed_ap_metrics(per_class, frequency)


class FixedAPEvaluator(DatasetEvaluator):
    """Fixed box AP of a detectron2 model on an LVIS-format dataset.

    Returns ``{"bbox_fixed": {"APfixed", "APfixed_r", "APfixed_c", "APfixed_f"}}`` in percent
    on the main process. After :meth:`evaluate`, ``per_class_ap`` (0-1, sorted category-id =
    contiguous order) and ``frequency`` hold the per-class values for a long-tail report. With
    ``output_dir`` they are also written to ``<output_dir>/fixed_ap_bbox.json``.
    """

    def __init__(self, dataset_name, topk=10000, output_dir=None, distributed=True,
                 evaluate=None):
        self._metadata = MetadataCatalog.get(dataset_name)
        self._topk_size = int(topk)
        self._output_dir = output_dir
        self._distributed = distributed
        self._evaluate_fn = evaluate
        self._lvis = None
        self._contiguous_to_dataset_id = None
        self.per_class_ap = self.frequency = None
        self.reset()

    def _lvis_api(self):
        if self._lvis is None:
            from lvis import LVIS

            self._lvis = LVIS(PathManager.get_local_path(self._metadata.json_file))
        return self._lvis

    def _category_lookup(self):
        if self._contiguous_to_dataset_id is None:
            id_map = self._metadata.get("thing_dataset_id_to_contiguous_id", None)
            if id_map is None:  # not loaded through our loader: it maps sorted ids in order
                id_map = {c: i for i, c in enumerate(sorted(self._lvis_api().get_cat_ids()))}
            self._contiguous_to_dataset_id = np.array(sorted(id_map, key=id_map.get), np.int64)
        return self._contiguous_to_dataset_id

    def reset(self):
        self._topk = PerClassTopK(self._topk_size)
        self._num_images = 0

    def process(self, inputs, outputs):
        for inp, output in zip(inputs, outputs):
            if "instances" not in output:
                continue
            self._num_images += 1
            instances = output["instances"].to("cpu")
            boxes = instances.pred_boxes.tensor.numpy().astype(np.float64)
            boxes[:, 2:] -= boxes[:, :2]  # XYXY -> XYWH, as LVIS results are
            classes = self._category_lookup()[instances.pred_classes.numpy()]
            self._topk.add(inp["image_id"], boxes, instances.scores.numpy(), classes)

    def evaluate(self):
        self._topk.compact()  # send only the top k per class
        if self._distributed:
            comm.synchronize()
            parts = comm.gather((self._num_images, self._topk), dst=0)
            if not comm.is_main_process():
                return None
        else:
            parts = [(self._num_images, self._topk)]
        if sum(n for n, _ in parts) == 0:
            logger.warning("[FixedAPEvaluator] Did not receive valid predictions.")
            return {}
        merged = parts[0][1]
        for _, other in parts[1:]:
            merged.merge(other)
        if len(self._lvis_api().get_ann_ids()) == 0:
            logger.info("Annotations are not available for evaluation.")
            return {}

        logger.info("Evaluating Fixed AP on %d detections (top %d per class, no per-image cap)",
                    len(merged), self._topk_size)
        self.per_class_ap, self.frequency = per_class_fixed_ap(
            self._lvis_api(), merged.results(), self._evaluate_fn)
        metrics = {k: 100.0 * v for k, v in fixed_ap_metrics(self.per_class_ap,
                                                             self.frequency).items()}
        if self._output_dir:
            self._write(metrics)
        return {"bbox_fixed": metrics}

    def _write(self, metrics):
        def number(value):
            return None if np.isnan(value) else float(value)

        cat_ids = sorted(self._lvis_api().get_cat_ids())
        per_class = [{"category_id": int(c), "frequency": str(f), "ap": number(ap)}
                     for c, f, ap in zip(cat_ids, self.frequency, self.per_class_ap)]
        payload = json.dumps({"topk": self._topk_size,
                              "metrics": {k: number(v) for k, v in metrics.items()},
                              "per_class_ap": per_class}, indent=1).encode("utf-8")
        PathManager.mkdirs(self._output_dir)
        atomic_write(os.path.join(self._output_dir, "fixed_ap_bbox.json"),
                     lambda f: f.write(payload))
