# Copyright (c) lt_d2 contributors.
"""``LTTrainer``: detectron2's ``DefaultTrainer`` with lt_d2's samplers, evaluators and checks."""
import logging
import os

import torch
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, LVISEvaluator

from ..data import build_training_sampler, check_dataset_files
from ..data.copy_paste import CopyPasteDatasetMapper
from .freeze import check_weights_fit, freeze_all_but

logger = logging.getLogger(__name__)


def _has_compiled_ops():
    from detectron2 import _C

    return hasattr(_C, "get_compiler_version")


def check_num_classes(cfg, dataset_name):
    """Raise if ``MODEL.ROI_HEADS.NUM_CLASSES`` differs from the dataset's number of classes."""
    classes = MetadataCatalog.get(dataset_name).get("thing_classes", None)
    if classes is not None and len(classes) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        raise ValueError(
            f"MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES} but dataset "
            f"'{dataset_name}' has {len(classes)} classes. Set MODEL.ROI_HEADS.NUM_CLASSES "
            f"{len(classes)} in the config or on the command line."
        )


def check_config(cfg):
    """Fail early, with the fix, on settings that would only fail deep inside training."""
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"MODEL.DEVICE is '{cfg.MODEL.DEVICE}' but no CUDA device is available. "
            "Add `MODEL.DEVICE cpu` to the command line to run on the CPU."
        )
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        check_dataset_files(name)


class LTTrainer(DefaultTrainer):
    """``DefaultTrainer`` that

    * builds the training sampler from lt_d2's sampler registry (``DATALOADER.SAMPLER_TRAIN``);
    * evaluates LVIS-format datasets with ``LVISEvaluator`` and others with ``COCOEvaluator``;
    * maps training images with large-scale jitter / copy-paste when ``INPUT.LT`` asks for it;
    * checks datasets, device and ``NUM_CLASSES`` before it spends time training;
    * in decoupled stage two (``MODEL.LT.TRAINABLE``), freezes everything else and checks that
      ``MODEL.WEIGHTS`` holds every frozen tensor.
    """

    def __init__(self, cfg):
        check_config(cfg)
        super().__init__(cfg)

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        if cfg.MODEL.LT.TRAINABLE:
            freeze_all_but(model, list(cfg.MODEL.LT.TRAINABLE))
        return model

    def resume_or_load(self, resume=True):
        has_checkpoint = resume and self.checkpointer.has_checkpoint()
        if self.cfg.MODEL.LT.TRAINABLE and not has_checkpoint:
            if not self.cfg.MODEL.WEIGHTS:
                raise ValueError("MODEL.LT.TRAINABLE is set (decoupled stage two) but MODEL.WEIGHTS "
                                 "is empty: point it at the stage-one checkpoint after surgery.")
            model = self.model.module if hasattr(self.model, "module") else self.model
            check_weights_fit(model, self.cfg.MODEL.WEIGHTS)
        return super().resume_or_load(resume=resume)

    @classmethod
    def build_train_loader(cls, cfg):
        dataset_dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
            if cfg.MODEL.KEYPOINT_ON
            else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        check_num_classes(cfg, cfg.DATASETS.TRAIN[0])
        sampler = build_training_sampler(cfg, dataset_dicts)
        mapper = None  # detectron2's DatasetMapper
        if cfg.INPUT.LT.COPY_PASTE.ENABLED and not cfg.INPUT.LT.LSJ.ENABLED:
            raise ValueError("INPUT.LT.COPY_PASTE needs INPUT.LT.LSJ.ENABLED True (pasting "
                             "needs images of one fixed size).")
        if cfg.INPUT.LT.LSJ.ENABLED:
            mapper = CopyPasteDatasetMapper(cfg, dataset_dicts)
        return build_detection_train_loader(cfg, dataset=dataset_dicts, sampler=sampler,
                                            mapper=mapper)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        check_dataset_files(dataset_name)
        loader = build_detection_test_loader(cfg, dataset_name)
        check_num_classes(cfg, dataset_name)
        return loader

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
        if evaluator_type == "lvis":
            return LVISEvaluator(dataset_name, output_dir=output_folder)
        if evaluator_type == "coco":
            return COCOEvaluator(dataset_name, output_dir=output_folder,
                                 use_fast_impl=_has_compiled_ops())
        raise NotImplementedError(
            f"No evaluator for dataset '{dataset_name}' of evaluator_type '{evaluator_type}'; "
            "lt_d2 evaluates 'lvis' and 'coco' datasets."
        )

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """Evaluate with detectron2's test-time augmentation (``TEST.AUG``), as its train_net."""
        from collections import OrderedDict

        from detectron2.modeling import GeneralizedRCNNWithTTA

        logger.info("Running inference with test-time augmentation ...")
        model = GeneralizedRCNNWithTTA(cfg, model)
        evaluators = [
            cls.build_evaluator(cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA"))
            for name in cfg.DATASETS.TEST
        ]
        res = cls.test(cfg, model, evaluators)
        return OrderedDict({k + "_TTA": v for k, v in res.items()})
