# Copyright (c) lt_d2 contributors.
import itertools
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data.common import ToIterableDataset
from torch.utils.data import DataLoader

from lt_d2.config import add_lt_config
from lt_d2.data import SAMPLER_REGISTRY, build_training_sampler
from lt_d2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler


def _cfg(**dataloader):
    cfg = add_lt_config(get_cfg())
    for k, v in dataloader.items():
        setattr(cfg.DATALOADER, k, v)
    cfg.SEED = 7
    return cfg


TOY = [{"annotations": [{"category_id": 0}, {"category_id": 1}]},
       {"annotations": [{"category_id": 0}]},
       {"annotations": []}]


def test_registry_holds_detectron2_samplers():
    assert "TrainingSampler" in SAMPLER_REGISTRY
    assert "RepeatFactorTrainingSampler" in SAMPLER_REGISTRY
    assert isinstance(build_training_sampler(_cfg(), TOY), TrainingSampler)


def test_repeat_factors_match_detectron2_upstream_values():
    sampler = build_training_sampler(
        _cfg(SAMPLER_TRAIN="RepeatFactorTrainingSampler", REPEAT_THRESHOLD=0.5), TOY)
    assert isinstance(sampler, RepeatFactorTrainingSampler)
    factors = sampler._int_part + sampler._frac_part
    assert torch.allclose(factors, torch.tensor([math.sqrt(3 / 2), 1.0, 1.0]))


def test_unknown_sampler_lists_the_registered_ones():
    with pytest.raises(KeyError, match="RepeatFactorTrainingSampler, TrainingSampler"):
        build_training_sampler(_cfg(SAMPLER_TRAIN="NoSuchSampler"), TOY)


def _stream(sampler, num_workers, n=40):
    loader = DataLoader(ToIterableDataset(list(range(100)), sampler), num_workers=num_workers,
                        batch_size=None)
    return list(itertools.islice(iter(loader), n))


def test_stream_is_identical_across_worker_counts_and_seeded_by_cfg():
    cfg = _cfg()
    dicts = [{"annotations": []}] * 100
    a = _stream(build_training_sampler(cfg, dicts), 0)
    b = _stream(build_training_sampler(cfg, dicts), 2)
    assert a == b
    cfg.SEED = 8
    assert _stream(build_training_sampler(cfg, dicts), 0) != a
