# Copyright (c) lt_d2 contributors.
"""The evaluator of a dataset, chosen by its metadata's ``evaluator_type`` and ``cfg.TEST.LT``.

The training class statistics (long-tail report, head / medium / tail and quintile groups) come
in from the caller, as they do into the losses: evaluation never reads the training set itself.
"""
import logging

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators

from .longtail_report import LongTailReport

logger = logging.getLogger(__name__)

__all__ = ["build_lt_evaluator"]


def _has_compiled_ops():
    try:  # absent from a source tree that was not built; a stub in the pure-Python 0.6 install
        from detectron2 import _C
    except ImportError:
        return False
    return hasattr(_C, "get_compiler_version")


def _stats_unavailable(cfg, class_stats):
    """Why there are no training statistics, for the log."""
    if class_stats is None:
        return "were not given to build_lt_evaluator"
    return "is empty" if not cfg.DATASETS.TRAIN else "could not be read (see above)"


def build_lt_evaluator(cfg, dataset_name, output_folder, class_stats=None):
    """The evaluator for ``dataset_name``: LVIS (``TEST.LT.LVIS_BACKEND``, plus Fixed AP and the
    long-tail report as ``TEST.LT`` asks), COCO, OpenImages or multi-label.

    ``class_stats``: the training class statistics (an object with the fields of
    ``lt_d2.data.class_stats.ClassStats``), or a function returning them or None, called at
    most once and only for evaluators that use them (``LTTrainer.build_evaluator`` passes those
    of ``cfg.DATASETS.TRAIN``). None: evaluate without them (no long-tail report, no head /
    medium / tail means, Open Images quintiles from the dataset's own categories).
    """
    get_stats = class_stats if callable(class_stats) else lambda: class_stats
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
    if evaluator_type == "lvis":
        from .lvis_evaluation import LTLVISEvaluator

        if cfg.TEST.LT.LVIS_BACKEND not in ("fast", "lvis-api"):
            raise ValueError(f"TEST.LT.LVIS_BACKEND={cfg.TEST.LT.LVIS_BACKEND!r}: use 'fast' or "
                             "'lvis-api'.")
        evaluator = LTLVISEvaluator(dataset_name, output_dir=output_folder,
                                    backend=cfg.TEST.LT.LVIS_BACKEND)
        stats = get_stats() if cfg.TEST.LT.REPORT else None
        if cfg.TEST.LT.REPORT and stats is None:
            logger.warning(
                "No long-tail report for %s: it needs the class statistics of DATASETS.TRAIN, "
                "which %s. Set TEST.LT.REPORT False to silence this.", dataset_name,
                _stats_unavailable(cfg, class_stats))
        if stats is not None:
            evaluator = LongTailReport(evaluator, stats, output_folder)
        if not cfg.TEST.LT.FIXED_AP:
            return evaluator
        from .fixed_ap import FixedAPEvaluator
        from .lvis_fast import evaluate_lvis

        fast = cfg.TEST.LT.LVIS_BACKEND == "fast"
        fixed = FixedAPEvaluator(dataset_name, topk=cfg.TEST.LT.FIXED_AP_TOPK,
                                 output_dir=output_folder, evaluate=evaluate_lvis if fast else None)
        return DatasetEvaluators([evaluator, fixed])
    if evaluator_type == "multilabel":
        from .multilabel import MultiLabelEvaluator

        stats = get_stats()
        return MultiLabelEvaluator(dataset_name, None if stats is None else stats.image_count,
                                   output_dir=output_folder)
    if evaluator_type == "openimages":
        from .openimages import OpenImagesEvaluator

        stats = get_stats()
        return OpenImagesEvaluator(
            dataset_name, output_dir=output_folder,
            train_instance_count=None if stats is None else stats.instance_count)
    if evaluator_type == "coco":
        return COCOEvaluator(dataset_name, output_dir=output_folder,
                             use_fast_impl=_has_compiled_ops())
    raise NotImplementedError(
        f"No evaluator for dataset '{dataset_name}' of evaluator_type '{evaluator_type}'; "
        "lt_d2 evaluates 'lvis', 'coco', 'openimages' and 'multilabel' datasets."
    )
