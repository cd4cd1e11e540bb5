# Copyright (c) lt_d2 contributors.
"""torchvision:// weights: name conversion, the PathManager handler, its cache (no download)."""
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from detectron2.utils.file_io import PathManager
from torchvision.models._api import WeightsEnum

import lt_d2.checkpoint.torchvision_weights as tvw
from lt_d2.checkpoint import convert_torchvision_resnet
from lt_d2.config import add_lt_config

STAGES = '["res2", "res3", "res4", "res5"]'


def _torchvision_model(builder, seed):
    """A randomly initialised torchvision ResNet whose batch norms are not the identity (so a
    wrongly mapped norm changes the output)."""
    torch.manual_seed(seed)
    model = builder(weights=None).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _d2_cfg(depth, groups, width, *opts):
    cfg = add_lt_config(get_cfg())
    cfg.merge_from_list([
        "MODEL.RESNETS.DEPTH", str(depth), "MODEL.RESNETS.NUM_GROUPS", str(groups),
        "MODEL.RESNETS.WIDTH_PER_GROUP", str(width), "MODEL.RESNETS.STRIDE_IN_1X1", "False",
        "MODEL.RESNETS.NORM", "BN", "MODEL.RESNETS.OUT_FEATURES", STAGES,
        "MODEL.FPN.IN_FEATURES", STAGES, *opts])
    return cfg


@pytest.fixture
def fake_download(monkeypatch, tmp_path):
    """torchvision's weight download returns the state dict of a local model; counts calls."""
    monkeypatch.setenv("LT_D2_CACHE", str(tmp_path / "cache"))
    calls = []

    def install(model):
        def get_state_dict(self, *args, **kwargs):
            calls.append(self)
            return model.state_dict()
        monkeypatch.setattr(WeightsEnum, "get_state_dict", get_state_dict)
        return calls
    return install


def test_conversion_names_match_detectron2s_resnet():
    tv = torchvision.models.resnet18(weights=None).state_dict()
    converted = convert_torchvision_resnet(tv)
    d2 = build_resnet_backbone(_d2_cfg(18, 1, 64, "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"),
                               ShapeSpec(channels=3)).state_dict()
    assert set(converted) == {k for k in d2 if not k.endswith("num_batches_tracked")}
    assert all(converted[k].shape == d2[k].shape for k in converted)
    assert converted["res2.0.conv1.norm.running_var"] is tv["layer1.0.bn1.running_var"]
    assert converted["res3.0.shortcut.norm.weight"] is tv["layer2.0.downsample.1.weight"]
    assert converted["stem.conv1.norm.bias"] is tv["bn1.bias"]
    with pytest.raises(ValueError, match="not a key of a torchvision ResNet"):
        convert_torchvision_resnet({"features.0.weight": torch.zeros(1)})


@pytest.mark.parametrize("builder, spec, depth, groups, width", [
    (torchvision.models.resnet50, "resnet50", 50, 1, 64),
    (torchvision.models.resnext50_32x4d, "resnext50_32x4d.DEFAULT", 50, 32, 4),
])
def test_torchvision_weights_load_into_detectron2(fake_download, builder, spec, depth, groups,
                                                  width):
    tv = _torchvision_model(builder, seed=depth + groups)
    calls = fake_download(tv)
    cfg = _d2_cfg(depth, groups, width, "MODEL.LT.NORM_EVAL", "True",
                  "MODEL.BACKBONE.FREEZE_AT", "2")
    backbone = BACKBONE_REGISTRY.get("build_lt_resnet_fpn_backbone")(cfg, ShapeSpec(channels=3))
    DetectionCheckpointer(backbone).load(f"torchvision://{spec}")
    assert len(calls) == 1
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = tv.layer4(
            tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
        backbone.train()  # NORM_EVAL: training mode normalises with the loaded statistics too
        out = backbone.bottom_up(x)["res5"]
    assert torch.allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_handler_writes_a_model_zoo_pickle_once(fake_download, tmp_path, monkeypatch):
    calls = fake_download(torchvision.models.resnet18(weights=None))
    conversions = []
    convert = tvw.convert_torchvision_resnet
    monkeypatch.setattr(tvw, "convert_torchvision_resnet",
                        lambda sd: conversions.append(1) or convert(sd))
    path = PathManager.get_local_path("torchvision://resnet18")
    assert path == os.path.join(str(tmp_path), "cache", "torchvision", "resnet18-IMAGENET1K_V1.pkl")
    with open(path, "rb") as f:
        data = pickle.load(f)
    assert data["__author__"] == "torchvision" and data["matching_heuristics"] is True
    assert all(isinstance(v, np.ndarray) for v in data["model"].values())
    assert "stem.conv1.weight" in data["model"] and not any(
        k.startswith("fc") for k in data["model"])
    assert PathManager.get_local_path("torchvision://resnet18") == path
    assert len(calls) == 1 and len(conversions) == 1  # the second call reads the cache
    assert [f for f in os.listdir(os.path.dirname(path))] == ["resnet18-IMAGENET1K_V1.pkl"]


def test_unknown_names_say_how_to_spell_them(fake_download):
    with pytest.raises(ValueError, match=r"torchvision://<model>.*resnet50.*resnext101_64x4d"):
        PathManager.get_local_path("torchvision://resnet5")
    with pytest.raises(ValueError, match="no weights 'IMAGENET22K'"):
        PathManager.get_local_path("torchvision://resnet50.imagenet22k")
    assert PathManager.exists(
        "torchvision://resnet101") and not PathManager.exists("torchvision://vgg16")


def test_bare_name_is_mmcvs_imagenet1k_v1():
    assert tvw.resolve_weights("resnet50")[1].name == "IMAGENET1K_V1"
    assert tvw.resolve_weights("resnet50.default")[1] is torchvision.models.ResNet50_Weights.DEFAULT
    assert tvw.resolve_weights("resnext101_64x4d")[1].name == "IMAGENET1K_V1"
