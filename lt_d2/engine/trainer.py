# Copyright (c) lt_d2 contributors.
"""``LTTrainer``: detectron2's ``DefaultTrainer`` with lt_d2's samplers, evaluators and checks."""
import logging
import os

import torch
from detectron2.data import (
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer
from detectron2.utils import comm

from ..config import is_multilabel, model_num_classes
from ..data import build_training_sampler, check_dataset_files
from ..data.copy_paste import CopyPasteDatasetMapper
from ..data.multilabel_mapper import MultiLabelDatasetMapper, build_multilabel_test_loader
from ..data.stream import ResumableTrainLoader
from ..evaluation import build_lt_evaluator
from . import resume as exact_resume
from .amp import use_cpu_amp
from .freeze import check_weights_fit, freeze_all_but, skip_frozen_losses
from .metrics_json import make_strict, strict_json_line

logger = logging.getLogger(__name__)


def check_num_classes(cfg, dataset_name):
    """Raise if the model's number of classes differs from the dataset's."""
    classes = MetadataCatalog.get(dataset_name).get("thing_classes", None)
    num_classes, key = model_num_classes(cfg)
    if classes is not None and len(classes) != num_classes:
        raise ValueError(
            f"{key} is {num_classes} but dataset '{dataset_name}' has {len(classes)} classes. "
            f"Set {key} {len(classes)} in the config or on the command line."
        )


def check_config(cfg, training=True):
    """Fail early, with the fix, on settings that would only fail deep inside training.
    ``training=False`` (``--eval-only``): the training sets need not exist, as the model reads
    everything it needs at inference from its checkpoint."""
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"MODEL.DEVICE is '{cfg.MODEL.DEVICE}' but no CUDA device is available. "
            "Add `MODEL.DEVICE cpu` to the command line to run on the CPU."
        )
    for name in (list(cfg.DATASETS.TRAIN) if training else []) + list(cfg.DATASETS.TEST):
        check_dataset_files(name)
        multilabel_data = MetadataCatalog.get(name).get("evaluator_type", None) == "multilabel"
        if multilabel_data != is_multilabel(cfg):
            raise ValueError(
                f"Dataset '{name}' is a {'multi-label classification' if multilabel_data else 'detection'}"
                f" dataset but MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE}. Use "
                "MultiLabelClassifier with multi-label datasets (coco_mlt_*, voc_mlt_*, "
                "ml_synthetic_*) and a detector with detection datasets."
            )
    if is_multilabel(cfg) and cfg.TEST.AUG.ENABLED:
        raise ValueError("TEST.AUG (detection test-time augmentation) does not apply to "
                         "MultiLabelClassifier; set TEST.AUG.ENABLED False.")


def write_eval_metrics(output_dir, results, calibration=None):
    """Append evaluation results to ``output_dir/metrics.json`` as one line of flattened keys
    ("multilabel/mAP", "bbox/APr", ...), the format of the metrics training writes there;
    undefined (NaN) metrics are written as null (strict JSON). ``calibration``: the score
    calibration the results were made with (a dict, written under "calibration"), if any."""
    from detectron2.evaluation.testing import flatten_results_dict
    from detectron2.utils.file_io import PathManager

    flat = {k: float(v) for k, v in flatten_results_dict(results).items()}
    if not flat or not output_dir:
        return
    PathManager.mkdirs(output_dir)
    with PathManager.open(os.path.join(output_dir, "metrics.json"), "a") as f:
        extra = {"calibration": calibration} if calibration else {}
        f.write(strict_json_line({"eval_only": True, **extra, **flat}))


def with_full_model_clipping(optimizer, max_norm, norm_type=2.0):
    """``optimizer`` whose ``step`` first scales all gradients so that their joint norm is at
    most ``max_norm`` (torch's ``clip_grad_norm_`` over every parameter, as mmcv's grad_clip;
    detectron2's "norm" clipping bounds each parameter's norm separately)."""
    base = type(optimizer)

    class FullModelClipped(base):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure)

    FullModelClipped.__name__ = f"FullModelClipped{base.__name__}"
    optimizer.__class__ = FullModelClipped
    return optimizer


class LTTrainer(DefaultTrainer):
    """``DefaultTrainer`` that

    * builds the training sampler from lt_d2's sampler registry (``DATALOADER.SAMPLER_TRAIN``);
    * picks the evaluator from the dataset (LVIS with Fixed AP and the long-tail report, COCO,
      OpenImages, multi-label; see :func:`lt_d2.evaluation.build_lt_evaluator`);
    * maps training images with large-scale jitter / copy-paste when ``INPUT.LT`` asks for it;
    * checks datasets, device and ``NUM_CLASSES`` before it spends time training;
    * in decoupled stage two (``MODEL.LT.TRAINABLE``), freezes everything else, skips the
      losses of the frozen heads and checks that ``MODEL.WEIGHTS`` holds every frozen tensor;
    * resumes exactly (``--resume``): optimizer, data stream, RNGs and logs continue as if
      training had not stopped, and checkpoints are written atomically (see
      :mod:`lt_d2.engine.resume`).
    """

    def __init__(self, cfg):
        check_config(cfg)
        self._lt_resume_state = None
        super().__init__(cfg)
        # detectron2's AMPTrainer is CUDA-only: on the CPU, SOLVER.AMP.ENABLED means bfloat16
        self._trainer = use_cpu_amp(self._trainer, cfg.MODEL.DEVICE)
        seed = getattr(self._trainer.data_loader, "seed", None)
        if seed is None:
            seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        self.rng_seed = int(seed)  # the model's RNGs are reseeded from it every iteration

    def build_writers(self):
        """detectron2's writers, with ``metrics.json`` written as strict JSON (NaN -> null)."""
        from detectron2.utils.events import JSONWriter

        writers = super().build_writers()
        for writer in writers:
            if isinstance(writer, JSONWriter):
                make_strict(writer)
        return writers

    def build_hooks(self):
        # runs in DefaultTrainer.__init__ right after it made the checkpointer: swap it for the
        # atomic one before the checkpointing hook takes it
        ckpt = self.checkpointer
        self.checkpointer = exact_resume.AtomicCheckpointer(
            ckpt.model, ckpt.save_dir, save_to_disk=ckpt.save_to_disk, **ckpt.checkpointables)
        return super().build_hooks()

    def state_dict(self):
        return exact_resume.trainer_state(self, super().state_dict())

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        exact_resume.load_trainer_state(self, state_dict)

    def before_train(self):
        exact_resume.restore_logs(self)
        super().before_train()

    def before_step(self):
        super().before_step()
        exact_resume.seed_iteration(self.rng_seed, self.iter)

    @classmethod
    def build_optimizer(cls, cfg, model):
        """detectron2's optimizer; ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model"`` adds
        clipping of the norm of all gradients together (the mmdetection recipes' grad_clip)."""
        clip = cfg.SOLVER.CLIP_GRADIENTS
        if not (clip.ENABLED and clip.CLIP_TYPE == "full_model"):
            return super().build_optimizer(cfg, model)
        cfg = cfg.clone()
        cfg.defrost()
        cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
        return with_full_model_clipping(super().build_optimizer(cfg, model), clip.CLIP_VALUE,
                                        clip.NORM_TYPE)

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        if cfg.MODEL.LT.TRAINABLE:
            freeze_all_but(model, list(cfg.MODEL.LT.TRAINABLE))
            skip_frozen_losses(model)
        return model

    def resume_or_load(self, resume=True):
        has_checkpoint = resume and self.checkpointer.has_checkpoint()
        if self.cfg.MODEL.LT.TRAINABLE and not has_checkpoint:
            if not self.cfg.MODEL.WEIGHTS:
                raise ValueError("MODEL.LT.TRAINABLE is set (decoupled stage two) but MODEL.WEIGHTS "
                                 "is empty: point it at the stage-one checkpoint after surgery.")
            model = self.model.module if hasattr(self.model, "module") else self.model
            check_weights_fit(model, self.cfg.MODEL.WEIGHTS)
        if has_checkpoint:
            self.checkpointer.remove_partial_files()
        self._lt_resume_state = None
        super().resume_or_load(resume=resume)
        if has_checkpoint:
            exact_resume.apply_resume(self)

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
        if is_multilabel(cfg):
            mapper = MultiLabelDatasetMapper(cfg, is_train=True)
        total, world = cfg.SOLVER.IMS_PER_BATCH, comm.get_world_size()
        if total % world:
            raise ValueError(f"SOLVER.IMS_PER_BATCH ({total}) must be divisible by the number of "
                             f"processes ({world}).")
        # detectron2's loader, made resumable (see lt_d2/data/stream.py)
        return ResumableTrainLoader(
            dataset_dicts, sampler, mapper or DatasetMapper(cfg, True), total // world,
            aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
            num_workers=cfg.DATALOADER.NUM_WORKERS)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        check_dataset_files(dataset_name)
        if is_multilabel(cfg):
            loader = build_multilabel_test_loader(cfg, dataset_name)
        else:
            loader = build_detection_test_loader(cfg, dataset_name)
        check_num_classes(cfg, dataset_name)
        return loader

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return build_lt_evaluator(cfg, dataset_name, output_folder)

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
