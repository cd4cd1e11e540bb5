# Copyright (c) lt_d2 contributors.
"""``torchvision://<model>`` weights paths: torchvision's ImageNet ResNets for detectron2.

``MODEL.WEIGHTS: torchvision://resnet50`` fetches torchvision's weights (cached by torch.hub),
renames them to detectron2's ResNet names once, and hands detectron2 a model-zoo-style ``.pkl``
in ``$LT_D2_CACHE`` (default ``~/.torch/lt_d2``), which DetectionCheckpointer loads with its
name-matching heuristics (the backbone's ``backbone.bottom_up.`` prefix is found by them).

A bare model name means the weights mmcv / mmengine's ``torchvision://<model>`` loads, i.e.
``IMAGENET1K_V1`` (torchvision 0.12's weights, those the mmdetection seed projects trained
from); ``torchvision://resnet50.IMAGENET1K_V2`` or ``torchvision://resnet50.DEFAULT`` choose
others. The models need ``MODEL.RESNETS.STRIDE_IN_1X1 False`` (torchvision puts the stride in
the 3x3 conv), RGB input and torchvision's mean / std (configs/Base-RCNN-FPN-torchvision.yaml).
"""
import os
import pickle
import re

from detectron2.utils.file_io import PathHandler, PathManager

from ..file_io import atomic_write

__all__ = ["TorchvisionHandler", "cache_dir", "convert_torchvision_resnet", "resolve_weights"]

PREFIX = "torchvision://"
_LAYER = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")
_BN = re.compile(r"^bn(\d)\.(.+)$")
_CONV = re.compile(r"^conv(\d)\.weight$")
_DOWNSAMPLE = re.compile(r"^downsample\.([01])\.(.+)$")


def convert_torchvision_resnet(state_dict):
    """Rename a torchvision ResNet / ResNeXt / Wide ResNet state dict to detectron2's ResNet
    names; values are returned unchanged. The classifier ``fc`` and the batch norms'
    ``num_batches_tracked`` are dropped (detectron2's model-zoo files have neither; a loaded
    BatchNorm2d sets it to 0).

    conv1 -> stem.conv1, bn1 -> stem.conv1.norm, layerN.i -> res{N+1}.i, convK -> convK,
    bnK -> convK.norm, downsample.0 / .1 -> shortcut / shortcut.norm.
    """
    out = {}
    for key, value in state_dict.items():
        if key.startswith("fc.") or key.endswith(".num_batches_tracked"):
            continue
        if key == "conv1.weight":
            new = "stem.conv1.weight"
        elif key.startswith("bn1."):
            new = "stem.conv1.norm." + key[len("bn1."):]
        else:
            layer = _LAYER.match(key)
            rest = layer and layer.group(3)
            new = None
            if layer and _CONV.match(rest):
                new = rest
            elif layer and _BN.match(rest):
                k, field = _BN.match(rest).groups()
                new = f"conv{k}.norm.{field}"
            elif layer and _DOWNSAMPLE.match(rest):
                index, field = _DOWNSAMPLE.match(rest).groups()
                new = "shortcut." + field if index == "0" else "shortcut.norm." + field
            if new is None:
                raise ValueError(
                    f"{key!r} is not a key of a torchvision ResNet / ResNeXt state dict (conv1, "
                    "bn1, layer1-4, fc): torchvision:// supports only those models.")
            new = f"res{int(layer.group(1)) + 1}.{layer.group(2)}.{new}"
        out[new] = value
    return out


def _resnet_names():
    import torchvision

    return sorted(n for n in torchvision.models.list_models(module=torchvision.models)
                  if n.startswith(("resnet", "resnext", "wide_resnet")))


def resolve_weights(spec):
    """``"resnet50"`` / ``"resnet50.IMAGENET1K_V2"`` / ``"resnet50.DEFAULT"`` -> (model name,
    torchvision weights enum member). A bare name means IMAGENET1K_V1, as in mmcv / mmengine."""
    import torchvision

    name, _, choice = spec.partition(".")
    names = _resnet_names()
    if name not in names:
        raise ValueError(
            f"Unknown torchvision:// model {spec!r}. Write torchvision://<model>[.<weights>] "
            f"with <model> one of {', '.join(names)} (e.g. torchvision://resnet50, "
            "torchvision://resnext101_64x4d) and optional <weights> IMAGENET1K_V1 (the default, "
            "as mmcv's torchvision://), IMAGENET1K_V2 or DEFAULT.")
    enum = torchvision.models.get_model_weights(name)
    choice = choice.upper() or ("IMAGENET1K_V1" if "IMAGENET1K_V1" in enum.__members__ else
                                "DEFAULT")
    if choice != "DEFAULT" and choice not in enum.__members__:
        raise ValueError(f"torchvision has no weights {choice!r} for {name}; it has "
                         f"{', '.join(enum.__members__)}.")
    return name, getattr(enum, choice)


def cache_dir():
    """``$LT_D2_CACHE``, default ``~/.torch/lt_d2``."""
    return os.path.expanduser(os.environ.get("LT_D2_CACHE", "~/.torch/lt_d2"))


class TorchvisionHandler(PathHandler):
    """iopath handler of ``torchvision://<model>[.<weights>]``: the local path of the converted
    weights, converted on first use (the file is written atomically: concurrent processes, e.g.
    the ranks of a multi-GPU job, and interrupted runs never leave a half-written one)."""

    def _get_supported_prefixes(self):
        return [PREFIX]

    def _get_local_path(self, path, force=False, **kwargs):
        """``force``: convert again (iopath's "download again")."""
        self._check_kwargs(kwargs)
        name, weights = resolve_weights(path[len(PREFIX):])
        local = os.path.join(cache_dir(), "torchvision", f"{name}-{weights.name}.pkl")
        if force or not os.path.isfile(local):
            model = convert_torchvision_resnet(weights.get_state_dict(progress=True))
            data = {"model": {k: v.detach().cpu().numpy() for k, v in model.items()},
                    "__author__": "torchvision", "matching_heuristics": True}
            atomic_write(local, lambda f: pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL))
        return local

    def _open(self, path, mode="r", **kwargs):
        if any(c in mode for c in "wax+"):
            raise ValueError(f"{path} is read-only (mode {mode!r}).")
        return PathManager.open(self._get_local_path(path), mode, **kwargs)

    def _exists(self, path, **kwargs):
        try:  # a valid name exists (fetched on demand); nothing is downloaded here
            resolve_weights(path[len(PREFIX):])
        except ValueError:
            return False
        return True

    _isfile = _exists


def register():
    """Register the handler on detectron2's PathManager (once)."""
    if PREFIX not in PathManager._path_handlers:
        PathManager.register_handler(TorchvisionHandler())
