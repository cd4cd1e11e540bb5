# Copyright (c) lt_d2 contributors.
"""detectron2's LVISEvaluator with a choice of backend: the fast one or lvis-api itself."""
import copy
import json
import logging
import os

import detectron2.utils.comm as comm
from detectron2.evaluation import LVISEvaluator
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from .lvis_fast import evaluate_lvis

BACKENDS = ("fast", "lvis-api")
# detectron2 reports these, in percent
REPORTED_METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"]


class LTLVISEvaluator(LVISEvaluator):
    """LVISEvaluator whose metrics come from :func:`evaluate_lvis` (backend "fast") or from
    lvis-api (backend "lvis-api"); the numbers are the same, the results dict and logs are
    detectron2's. ``self._last_precision[task]`` keeps lvis-api's precision array
    [iou thresholds, recall thresholds, categories, areas] of the last evaluation.
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

    def evaluate(self):
        if not self._distributed:
            return super().evaluate()
        comm.synchronize()
        per_rank = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return
        # detectron2 chains the rank lists into a new list while they stay alive; moving them
        # one rank at a time keeps one copy of the (possibly huge) predictions
        per_rank[comm.get_rank()] = self._predictions  # not its deserialised duplicate
        predictions = []
        for rank in range(len(per_rank)):
            predictions.extend(per_rank[rank])
            per_rank[rank] = None
        own, self._predictions, self._distributed = self._predictions, predictions, False
        try:
            return super().evaluate()
        finally:
            self._predictions, self._distributed = own, True

    def _eval_predictions(self, predictions):
        self._logger.info("Preparing results in the LVIS format ...")
        self._last_precision = {}
        lvis_results = [r for p in predictions for r in p["instances"]]
        tasks = self._tasks or self._tasks_from_predictions(lvis_results)
        if hasattr(self._metadata, "thing_dataset_id_to_contiguous_id"):
            contiguous = self._metadata.thing_dataset_id_to_contiguous_id
            to_dataset_id = {v: k for k, v in contiguous.items()}
            for result in lvis_results:
                result["category_id"] = to_dataset_id[result["category_id"]]
        else:  # LVIS ids are the contiguous ids + 1
            for result in lvis_results:
                result["category_id"] += 1
        if self._output_dir:
            file_path = os.path.join(self._output_dir, "lvis_instances_results.json")
            self._logger.info("Saving results to {}".format(file_path))
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(lvis_results))
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return
        self._logger.info(f"Evaluating predictions with the {self._backend} backend ...")
        max_dets = 300 if self._max_dets_per_image is None else self._max_dets_per_image
        for task in sorted(tasks):
            if not lvis_results:  # detectron2's convention; lvis-api cannot take an empty list
                self._logger.warning("No predictions from the model!")
                self._results[task] = {metric: float("nan") for metric in REPORTED_METRICS}
                continue
            if self._backend == "fast":
                # mask areas for segm, without detectron2's deep copy that drops the boxes
                metrics, precision = evaluate_lvis(self._lvis_api, lvis_results, task, max_dets,
                                                   use_mask_area=task == "segm")
            else:
                metrics, precision = self._evaluate_with_lvis_api(lvis_results, task, max_dets)
            self._last_precision[task] = precision
            res = {metric: float(metrics[metric] * 100) for metric in REPORTED_METRICS}
            self._logger.info(f"Evaluation results for {task}: \n" + create_small_table(res))
            self._results[task] = res

    def _evaluate_with_lvis_api(self, lvis_results, task, max_dets):
        from lvis import LVISEval, LVISResults

        if task == "segm":  # mask areas, as detectron2 does
            lvis_results = [{k: v for k, v in r.items() if k != "bbox"} for r in lvis_results]
        # lvis-api adds fields to the dicts it is given; later tasks must not see them
        lvis_results = copy.deepcopy(lvis_results)
        self._logger.info(f"Evaluating with max detections per image = {max_dets}")
        lvis_dt = LVISResults(self._lvis_api, lvis_results, max_dets)
        lvis_eval = LVISEval(self._lvis_api, lvis_dt, task)
        lvis_eval.run()
        lvis_eval.print_results()
        return lvis_eval.get_results(), lvis_eval.eval["precision"]
