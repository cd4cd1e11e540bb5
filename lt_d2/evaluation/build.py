# Copyright (c) lt_d2 contributors.
"""The evaluator of a dataset, chosen by its metadata's ``evaluator_type`` and ``cfg.TEST.LT``."""
import logging

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators
from detectron2.utils import comm

from ..data.dataset_stats import train_class_stats

logger = logging.getLogger(__name__)

__all__ = ["build_lt_evaluator", "LongTailReport"]


class LongTailReport(DatasetEvaluator):
    """Runs an LVIS evaluator, then writes the long-tail report of each of its tasks (per-class
    AP with training image counts, AP per frequency group, AP-vs-frequency plot)."""

    def __init__(self, lvis_evaluator, class_stats, output_dir):
        self._inner = lvis_evaluator
        self._stats = class_stats
        self._output_dir = output_dir

    def reset(self):
        self._inner.reset()

    def process(self, inputs, outputs):
        self._inner.process(inputs, outputs)

    def evaluate(self):
        from .longtail_report import per_class_ap, write_longtail_report

        results = self._inner.evaluate()
        if not comm.is_main_process():
            return results
        if not self._output_dir:
            logger.info("No long-tail report: the evaluator has no output directory.")
            return results
        precisions = getattr(self._inner, "_last_precision", {})
        if not results:  # (and _last_precision may be a previous evaluation's)
            logger.warning("No long-tail report: nothing was evaluated (no images were "
                           "processed, or the dataset has no ground truth).")
            return results
        for task in sorted(set(results) - set(precisions)):
            logger.warning("No long-tail report for %s: no per-class AP was computed (the model "
                           "made no detection, so every AP is undefined).", task)
        names = self._inner._metadata.get("thing_classes", None)
        for task, precision in precisions.items():
            ap = 100 * per_class_ap(precision)  # percent, as the metrics detectron2 prints
            if names is None or len(names) != len(ap) or len(self._stats.image_count) != len(ap):
                logger.warning("No long-tail report for %s: %d classes evaluated, %s named, "
                               "%d in the training statistics.", task, len(ap),
                               None if names is None else len(names), len(self._stats.image_count))
                continue
            write_longtail_report(self._output_dir, task, names, ap, self._stats.image_count,
                                  self._stats.frequency)
        return results


def _train_stats(cfg):
    return train_class_stats(cfg, "no frequency-group scores or report.",
                             errors=(FileNotFoundError, ValueError))


def _has_compiled_ops():
    from detectron2 import _C

    return hasattr(_C, "get_compiler_version")


def build_lt_evaluator(cfg, dataset_name, output_folder):
    """The evaluator for ``dataset_name``: LVIS (``TEST.LT.LVIS_BACKEND``, plus Fixed AP and the
    long-tail report as ``TEST.LT`` asks), COCO, OpenImages or multi-label."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
    if evaluator_type == "lvis":
        from .lvis_evaluation import LTLVISEvaluator

        if cfg.TEST.LT.LVIS_BACKEND not in ("fast", "lvis-api"):
            raise ValueError(f"TEST.LT.LVIS_BACKEND={cfg.TEST.LT.LVIS_BACKEND!r}: use 'fast' or "
                             "'lvis-api'.")
        evaluator = LTLVISEvaluator(dataset_name, output_dir=output_folder,
                                    backend=cfg.TEST.LT.LVIS_BACKEND)
        stats = _train_stats(cfg) if cfg.TEST.LT.REPORT else None
        if cfg.TEST.LT.REPORT and stats is None:
            logger.warning(
                "No long-tail report for %s: it needs the class statistics of DATASETS.TRAIN, "
                "which %s. Set TEST.LT.REPORT False to silence this.", dataset_name,
                "is empty" if not cfg.DATASETS.TRAIN else "could not be read (see above)")
        if stats is not None:
            evaluator = LongTailReport(evaluator, stats, output_folder)
        if not cfg.TEST.LT.FIXED_AP:
            return evaluator
        from .fixed_ap import FixedAPEvaluator
        from .lvis_fast import evaluate_lvis

        fixed = FixedAPEvaluator(dataset_name, topk=cfg.TEST.LT.FIXED_AP_TOPK,
                                 output_dir=output_folder,
                                 evaluate=evaluate_lvis if cfg.TEST.LT.LVIS_BACKEND == "fast" else None)
        return DatasetEvaluators([evaluator, fixed])
    if evaluator_type == "multilabel":
        from .multilabel import MultiLabelEvaluator

        stats = _train_stats(cfg)
        return MultiLabelEvaluator(dataset_name, None if stats is None else stats.image_count,
                                   output_dir=output_folder)
    if evaluator_type == "openimages":
        from .openimages import OpenImagesEvaluator

        stats = _train_stats(cfg)
        return OpenImagesEvaluator(dataset_name, output_dir=output_folder,
                                   train_instance_count=None if stats is None else stats.instance_count)
    if evaluator_type == "coco":
        return COCOEvaluator(dataset_name, output_dir=output_folder,
                             use_fast_impl=_has_compiled_ops())
    raise NotImplementedError(
        f"No evaluator for dataset '{dataset_name}' of evaluator_type '{evaluator_type}'; "
        "lt_d2 evaluates 'lvis', 'coco', 'openimages' and 'multilabel' datasets."
    )
