# Copyright (c) lt_d2 contributors.
"""detectron2's LVISEvaluator with a choice of backend: the fast one or lvis-api itself."""
import copy
import json
import logging
import os

import numpy as np
import pycocotools.mask as mask_utils
from detectron2.evaluation import LVISEvaluator
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from .distributed import gather_predictions
from .lvis_fast import evaluate_lvis, result_dicts
from .rle_column import RLEColumn

BACKENDS = ("fast", "lvis-api")
# detectron2 reports these, in percent
REPORTED_METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"]


class LTLVISEvaluator(LVISEvaluator):
    """LVISEvaluator whose metrics come from :func:`evaluate_lvis` (backend "fast") or from
    lvis-api (backend "lvis-api"); the numbers are the same, the results dict and logs are
    detectron2's. ``self._last_precision[task]`` keeps lvis-api's precision array
    [iou thresholds, recall thresholds, categories, areas] of the last evaluation.

    Each image's detections are kept as arrays (see :meth:`process`), not as detectron2's one dict
    per detection: on LVIS v1 val (~6M detections) the dicts alone took ~3 GiB.
    """

    def __init__(self, dataset_name, tasks=None, distributed=True, output_dir=None, *,
                 max_dets_per_image=None, backend="fast"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        super().__init__(dataset_name, tasks, distributed, output_dir,
                         max_dets_per_image=max_dets_per_image)
        self._logger = logging.getLogger(__name__)
        self._backend = backend
        self._last_precision = {}

    def process(self, inputs, outputs):
        """detectron2's ``instances_to_coco_json``, as columns: image_id, category_id
        (contiguous), score (float32), bbox (float32 XYWH) and, with masks, segmentation (an
        :class:`RLEColumn`); the values are those its dicts would hold, in the same order.
        """
        for input, output in zip(inputs, outputs):
            prediction = {"image_id": input["image_id"]}
            if "instances" in output:
                prediction["instances"] = _instances_to_columns(
                    output["instances"].to(self._cpu_device), input["image_id"])
            if "proposals" in output:
                prediction["proposals"] = output["proposals"].to(self._cpu_device)
            self._predictions.append(prediction)

    def _tasks_from_predictions(self, columns):
        return ("bbox", "segm") if "segmentation" in columns else ("bbox",)

    def evaluate(self):
        if not self._distributed:
            return super().evaluate()
        predictions = gather_predictions(self._predictions)
        if predictions is None:  # not the main process
            return
        own, self._predictions, self._distributed = self._predictions, predictions, False
        try:
            return super().evaluate()
        finally:
            self._predictions, self._distributed = own, True

    def _eval_predictions(self, predictions):
        self._logger.info("Preparing results in the LVIS format ...")
        self._last_precision = {}
        columns = _concat_columns([p["instances"] for p in predictions])
        tasks = self._tasks or self._tasks_from_predictions(columns)
        to_dataset_category_ids(columns, self._metadata)
        num_results = len(columns["score"])
        if self._output_dir:
            file_path = os.path.join(self._output_dir, "lvis_instances_results.json")
            self._logger.info("Saving results to {}".format(file_path))
            with PathManager.open(file_path, "w") as f:
                _write_json(f, columns)
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return
        self._logger.info(f"Evaluating predictions with the {self._backend} backend ...")
        max_dets = 300 if self._max_dets_per_image is None else self._max_dets_per_image
        for task in sorted(tasks):
            if not num_results:  # detectron2's convention; lvis-api cannot take an empty list
                self._logger.warning("No predictions from the model!")
                self._results[task] = {metric: float("nan") for metric in REPORTED_METRICS}
                continue
            if self._backend == "fast":
                # mask areas for segm, without detectron2's deep copy that drops the boxes
                metrics, precision = evaluate_lvis(self._lvis_api, columns, task, max_dets,
                                                   use_mask_area=task == "segm")
            else:
                metrics, precision = self._evaluate_with_lvis_api(columns, task, max_dets)
            self._last_precision[task] = precision
            res = {metric: float(metrics[metric] * 100) for metric in REPORTED_METRICS}
            self._logger.info(f"Evaluation results for {task}: \n" + create_small_table(res))
            self._results[task] = res

    def _evaluate_with_lvis_api(self, columns, task, max_dets):
        from lvis import LVISEval, LVISResults

        if task == "segm":  # mask areas, as detectron2 does
            columns = {k: v for k, v in columns.items() if k != "bbox"}
        # fresh dicts per task: lvis-api adds fields to the dicts and RLEs it is given
        lvis_results = copy.deepcopy(result_dicts(columns))
        self._logger.info(f"Evaluating with max detections per image = {max_dets}")
        lvis_dt = LVISResults(self._lvis_api, lvis_results, max_dets)
        lvis_eval = LVISEval(self._lvis_api, lvis_dt, task)
        lvis_eval.run()
        lvis_eval.print_results()
        return lvis_eval.get_results(), lvis_eval.eval["precision"]


def to_dataset_category_ids(columns, metadata):
    """Turn the contiguous class ids of result ``columns`` into the dataset's category ids
    (in place): through the metadata's id map, else LVIS's convention (contiguous id + 1)."""
    contiguous = metadata.get("thing_dataset_id_to_contiguous_id", None)
    if contiguous:
        to_dataset_id = np.zeros(max(contiguous.values()) + 1, np.int64)
        to_dataset_id[list(contiguous.values())] = list(contiguous.keys())
        columns["category_id"] = to_dataset_id[columns["category_id"]]
    else:
        columns["category_id"] = columns["category_id"] + 1


def _instances_to_columns(instances, image_id):
    boxes = instances.pred_boxes.tensor.numpy().reshape(-1, 4)
    columns = {
        "image_id": image_id,
        "category_id": instances.pred_classes.numpy().astype(np.int32),
        "score": instances.scores.numpy(),
        # BoxMode.convert on the model's dtype, as detectron2 does before its tolist()
        "bbox": np.asarray(BoxMode.convert(boxes, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)),
    }
    if instances.has("pred_masks"):
        masks = instances.pred_masks.numpy().astype(np.uint8)
        # one call for the image: pycocotools encodes a Fortran-ordered H x W x N stack per mask
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(masks) else []
        # one buffer instead of a dict per mask; reads as detectron2's dicts (str counts)
        columns["segmentation"] = RLEColumn.from_counts(
            [rle["counts"] for rle in rles], np.tile(masks.shape[1:], (len(rles), 1)))
    return columns


def _concat_columns(per_image):
    """One set of columns for all images: image ids repeated per detection, arrays joined."""
    counts = [len(c["score"]) for c in per_image]
    columns = {
        "image_id": np.repeat(np.array([c["image_id"] for c in per_image], np.int64), counts),
        "category_id": np.concatenate([np.zeros(0, np.int64)]
                                      + [c["category_id"].astype(np.int64) for c in per_image]),
        # float32 to float64 is exact: the doubles detectron2's tolist() would give
        "score": np.concatenate([np.zeros(0)] + [c["score"].astype(np.float64) for c in per_image]),
        "bbox": np.concatenate([np.zeros((0, 4))]
                               + [c["bbox"].astype(np.float64) for c in per_image]),
    }
    # as detectron2: no segm task when not a single mask was predicted
    if any(c.get("segmentation") for c in per_image):
        columns["segmentation"] = RLEColumn.concatenate(
            c["segmentation"] for c in per_image if "segmentation" in c)
    return columns


def _write_json(f, columns, chunk=100000):
    """The results as detectron2's json list of dicts, a chunk of dicts at a time."""
    num = len(columns["score"])
    f.write("[")
    for start in range(0, num, chunk):
        part = {k: v[start:start + chunk] for k, v in columns.items()}
        text = json.dumps(result_dicts(part))
        f.write(("" if start == 0 else ", ") + text[1:-1])
    f.write("]")
