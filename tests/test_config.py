# Copyright (c) lt_d2 contributors.
import glob
import os
import re

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY

from lt_d2 import config as lt_config
from lt_d2.config import add_lt_config
from lt_d2.data import SAMPLER_REGISTRY

from .conftest import REPO

# every config file; the results tables (configs/paper_results.yaml and the synthetic one) are
# checked by test_reproduce.py
CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
                 if not os.path.basename(p).startswith("paper_results"))


def _flatten(node, prefix=""):
    out = {}
    for k, v in node.items():
        if hasattr(v, "items"):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def test_add_lt_config_adds_keys_without_touching_detectron2_keys():
    stock = _flatten(get_cfg())
    ours = _flatten(add_lt_config(get_cfg()))
    assert all(ours[k] == v for k, v in stock.items())
    assert set(ours) - set(stock), "lt_d2 adds keys"
    assert _flatten(add_lt_config(add_lt_config(get_cfg()))) == ours


def test_every_new_key_has_a_comment():
    """Each key, or each run of keys assigned together, sits under a comment."""
    assignment = re.compile(r"\s*cfg\.[A-Z_.]+ = (?!CN\(\))")
    lines = open(lt_config.__file__).read().splitlines()
    for i, line in enumerate(lines):
        if assignment.match(line):
            j = i - 1
            while assignment.match(lines[j]):
                j -= 1
            assert lines[j].strip().startswith("#"), line


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, REPO) for p in CONFIGS])
def test_every_yaml_loads_and_names_registered_things(path):
    cfg = add_lt_config(get_cfg())
    cfg.merge_from_file(path)
    if os.path.basename(path).startswith("Base-"):
        return
    assert cfg.MODEL.ROI_HEADS.NAME in ROI_HEADS_REGISTRY
    assert cfg.MODEL.BACKBONE.NAME in BACKBONE_REGISTRY
    assert cfg.DATALOADER.SAMPLER_TRAIN in SAMPLER_REGISTRY
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        assert name in DatasetCatalog.list(), name
    if cfg.MODEL.LT.TRAINABLE:  # stage two starts from a stage-one checkpoint after surgery
        assert cfg.MODEL.WEIGHTS.endswith(("model_reset_remove.pth", "model_reset_reset.pth"))
    elif "LVIS" in path:
        # ImageNet backbones (MSRA or torchvision), or a stage one after checkpoint surgery
        # (e.g. ACSL's COCO-trained detector with its class-specific layers dropped)
        pretrained = ("detectron2://ImageNetPretrained/", "torchvision://")
        surgery_outputs = ("model_reset_remove.pth", "model_reset_reset.pth")
        assert cfg.MODEL.WEIGHTS.startswith(pretrained) \
            or cfg.MODEL.WEIGHTS.endswith(surgery_outputs)
        assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == (1203 if "LVISv1" in path else 1230)
        assert cfg.TEST.DETECTIONS_PER_IMAGE == 300


def test_configs_cover_the_baselines():
    names = {os.path.relpath(p, os.path.join(REPO, "configs")) for p in CONFIGS}
    for version in ("LVISv1", "LVISv0.5"):
        for arch in ("mask_rcnn", "faster_rcnn"):
            assert f"{version}/{arch}_R_50_FPN_1x.yaml" in names
    assert "Synthetic-LT/faster_rcnn_tiny_ce.yaml" in names
