# Copyright (c) lt_d2 contributors.
"""The registry of training samplers that ``DATALOADER.SAMPLER_TRAIN`` names.

A sampler registers a ``torch.utils.data.Sampler`` subclass with a classmethod
``from_dataset(cfg, dataset_dicts, seed)`` that builds it over the (already filtered) training
dicts. The trainer needs no change to use a new one. Samplers yield an infinite, per-rank
stream of indices that is identical across data-loader workers, like detectron2's.
"""
import itertools
import logging

import numpy as np
import torch
from detectron2.data import samplers as d2_samplers
from detectron2.utils import comm
from detectron2.utils.registry import Registry
from torch.utils.data.sampler import Sampler

from ..config import model_num_classes

logger = logging.getLogger(__name__)

SAMPLER_REGISTRY = Registry("LT_SAMPLER")
SAMPLER_REGISTRY.__doc__ = """
Training samplers selectable by DATALOADER.SAMPLER_TRAIN. Each registered class has a
classmethod ``from_dataset(cfg, dataset_dicts, seed)`` that returns an instance.
"""


@SAMPLER_REGISTRY.register()
class TrainingSampler(d2_samplers.TrainingSampler):
    """detectron2's ``TrainingSampler``: an infinite stream of shuffled epochs."""

    @classmethod
    def from_dataset(cls, cfg, dataset_dicts, seed):
        return cls(len(dataset_dicts), seed=seed)


@SAMPLER_REGISTRY.register()
class RepeatFactorTrainingSampler(d2_samplers.RepeatFactorTrainingSampler):
    """detectron2's repeat-factor sampling (LVIS paper): r(c) = max(1, sqrt(t / f(c))).

    t is ``DATALOADER.REPEAT_THRESHOLD``; f(c) is the fraction of training images containing
    class c; an image is repeated max over its classes of r(c) times per epoch, rounded as
    ``DATALOADER.LT.REPEAT_ROUNDING`` says: "stochastic" (detectron2) or "ceil" (ceil(r)
    copies every epoch, as mmdetection's ClassBalancedDataset).
    """

    @classmethod
    def from_dataset(cls, cfg, dataset_dicts, seed):
        factors = cls.repeat_factors_from_category_frequency(
            dataset_dicts, cfg.DATALOADER.REPEAT_THRESHOLD
        )
        rounding = cfg.DATALOADER.LT.REPEAT_ROUNDING
        if rounding == "ceil":
            factors = torch.ceil(factors)  # no fractional part: stochastic rounding is exact
        elif rounding != "stochastic":
            raise ValueError(
                f"DATALOADER.LT.REPEAT_ROUNDING={rounding!r}: use 'stochastic' or 'ceil'.")
        return cls(factors, seed=seed)


def images_per_class(dataset_dicts, num_classes=None):
    """For each contiguous class id, the sorted indices of the dicts whose annotations hold it."""
    pairs = [(i, a["category_id"]) for i, d in enumerate(dataset_dicts) for a in d["annotations"]]
    if num_classes is None:
        num_classes = 1 + max((c for _, c in pairs), default=-1)
    if not pairs:
        return [np.zeros(0, np.int64) for _ in range(num_classes)]
    arr = np.unique(np.array(pairs, dtype=np.int64), axis=0)  # sorted by image, then class
    order = np.argsort(arr[:, 1], kind="stable")
    images, classes = arr[order, 0], arr[order, 1]
    bounds = np.searchsorted(classes, np.arange(num_classes + 1))
    return [images[bounds[c]: bounds[c + 1]] for c in range(num_classes)]


@SAMPLER_REGISTRY.register()
class ClassAwareSampler(Sampler):
    """Class-aware sampling (Shen et al., 2016; cRT / LWS stage two): draw a class uniformly,
    then the next image of that class (the next ``samples_per_class`` images: the DB-loss
    multi-label recipe takes 3).

    Classes come from a stream of class permutations; each class cycles through a permutation
    of its images, reshuffled when exhausted. The stream is infinite, depends only on the seed
    (identical in every data-loader worker), and each rank takes every world_size-th index, as
    detectron2's TrainingSampler. Classes without a training image are skipped (with a warning).
    """

    def __init__(self, class_images, seed=None, samples_per_class=1):
        """
        Args:
            class_images (list[array]): dataset indices holding each class.
            seed (int or None): shared seed; None draws one shared by all ranks.
            samples_per_class (int): consecutive images taken from each drawn class.
        """
        if samples_per_class < 1:
            raise ValueError(f"DATALOADER.LT.CLASS_AWARE_SAMPLES_PER_CLASS={samples_per_class}: "
                             "use a positive number.")
        self._samples_per_class = int(samples_per_class)
        empty = [c for c, imgs in enumerate(class_images) if len(imgs) == 0]
        if empty:
            logger.warning("ClassAwareSampler: %d classes have no training image and are "
                           "skipped: %s", len(empty), empty[:20])
        self._class_images = [torch.as_tensor(imgs, dtype=torch.long)
                              for imgs in class_images if len(imgs)]
        if not self._class_images:
            raise ValueError("ClassAwareSampler: no class has a training image.")
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank, self._world_size = comm.get_rank(), comm.get_world_size()

    @classmethod
    def from_dataset(cls, cfg, dataset_dicts, seed):
        num_classes, _ = model_num_classes(cfg)
        return cls(images_per_class(dataset_dicts, num_classes), seed=seed,
                   samples_per_class=cfg.DATALOADER.LT.CLASS_AWARE_SAMPLES_PER_CLASS)

    def __iter__(self):
        yield from itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self):
        g = torch.Generator().manual_seed(self._seed)
        num_classes = len(self._class_images)
        orders = [None] * num_classes  # each class's current permutation of its images
        positions = [0] * num_classes
        while True:
            for c in torch.randperm(num_classes, generator=g).tolist():
                images = self._class_images[c]
                for _ in range(self._samples_per_class):
                    if orders[c] is None or positions[c] == len(images):
                        orders[c] = images[torch.randperm(len(images), generator=g)].tolist()
                        positions[c] = 0
                    yield orders[c][positions[c]]
                    positions[c] += 1


def build_training_sampler(cfg, dataset_dicts):
    """Build the sampler named by ``cfg.DATALOADER.SAMPLER_TRAIN`` over ``dataset_dicts``.

    The stream is seeded with ``cfg.SEED`` when it is >= 0, else with a seed shared by all ranks.
    """
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name not in SAMPLER_REGISTRY:
        registered = ", ".join(sorted(k for k, _ in SAMPLER_REGISTRY))
        raise KeyError(
            f"Unknown training sampler DATALOADER.SAMPLER_TRAIN={name!r}. Registered samplers: "
            f"{registered}. Register a new one with @SAMPLER_REGISTRY.register()."
        )
    seed = cfg.SEED if cfg.SEED >= 0 else None
    logger.info("Using training sampler %s", name)
    return SAMPLER_REGISTRY.get(name).from_dataset(cfg, dataset_dicts, seed)
