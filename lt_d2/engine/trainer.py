# Copyright (c) lt_d2 contributors.
"""``LTTrainer``: detectron2's ``DefaultTrainer`` with lt_d2's samplers, evaluators and checks."""
import logging
import os

from detectron2.data import DatasetMapper, build_detection_test_loader, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer
from detectron2.utils import comm

from ..config import is_multilabel
from ..data import build_training_sampler, check_dataset_files, dataset_stats
from ..data.copy_paste import CopyPasteDatasetMapper
from ..data.multilabel_mapper import MultiLabelDatasetMapper, build_multilabel_test_loader
from ..data.stream import ResumableTrainLoader
from ..evaluation import build_lt_evaluator
from . import resume as exact_resume
from .amp import use_cpu_amp
from .checks import check_config, check_num_classes
from .freeze import check_weights_fit, freeze_all_but, skip_frozen_losses
from .metrics_json import make_strict
from .optimizer import with_full_model_clipping

logger = logging.getLogger(__name__)


def train_stats_for_evaluation(cfg):
    """The class statistics of ``cfg.DATASETS.TRAIN`` for the evaluators, or None (logged) when
    they cannot be read: evaluation goes on without the scores that need them."""
    return dataset_stats.train_class_stats(cfg, "no frequency-group scores or report.",
                                           errors=(FileNotFoundError, ValueError))


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
                raise ValueError("MODEL.LT.TRAINABLE is set (decoupled stage two) but "
                                 "MODEL.WEIGHTS is empty: point it at the stage-one checkpoint "
                                 "after surgery.")
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
        return build_lt_evaluator(cfg, dataset_name, output_folder,
                                  class_stats=lambda: train_stats_for_evaluation(cfg))

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """Evaluate with detectron2's test-time augmentation (``TEST.AUG``), as its train_net."""
        from collections import OrderedDict

        from detectron2.modeling import GeneralizedRCNNWithTTA

        logger.info("Running inference with test-time augmentation ...")
        model = GeneralizedRCNNWithTTA(cfg, model)
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference_TTA")
        evaluators = [cls.build_evaluator(cfg, name, output_folder=output_folder)
                      for name in cfg.DATASETS.TEST]
        res = cls.test(cfg, model, evaluators)
        return OrderedDict({k + "_TTA": v for k, v in res.items()})
