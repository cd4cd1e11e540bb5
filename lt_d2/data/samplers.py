# Copyright (c) lt_d2 contributors.
"""The registry of training samplers that ``DATALOADER.SAMPLER_TRAIN`` names.

A sampler registers a ``torch.utils.data.Sampler`` subclass with a classmethod
``from_dataset(cfg, dataset_dicts, seed)`` that builds it over the (already filtered) training
dicts. The trainer needs no change to use a new one. Samplers yield an infinite, per-rank
stream of indices that is identical across data-loader workers, like detectron2's.
"""
import logging

from detectron2.data import samplers as d2_samplers
from detectron2.utils.registry import Registry

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
    class c; an image is repeated max over its classes of r(c) times per epoch, with stochastic
    rounding.
    """

    @classmethod
    def from_dataset(cls, cfg, dataset_dicts, seed):
        factors = cls.repeat_factors_from_category_frequency(
            dataset_dicts, cfg.DATALOADER.REPEAT_THRESHOLD
        )
        return cls(factors, seed=seed)


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
