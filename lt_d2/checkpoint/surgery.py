# Copyright (c) lt_d2 contributors.
"""Checkpoint surgery for decoupled (two-stage) training: pure functions over checkpoints.

* ``remove``: drop the classifier (``cls_score``) of every box predictor, so stage two
  re-initialises it (cRT, BAGS).
* ``reset``: keep every weight (LWS, ACSL tune-fc and BACL start from the trained classifier).

Both keep only the model weights: optimizer, scheduler, iteration and trainer state go, and so do
the classification losses' running statistics (``cls_loss.*``), which stage two starts afresh.
With a new number of classes, every class-specific layer (classifier, class-specific box
regression, mask predictor) is dropped too, so stage two initialises it at its new size.
"""
import os
import pickle
import re

import numpy as np
import torch
from detectron2.utils.file_io import PathManager

from ..file_io import atomic_write

CLASSIFIER = re.compile(r"^roi_heads\.box_predictor\.(?:\d+\.)?cls_score\.")
LOSS_STATE = re.compile(r"^roi_heads\.box_predictor\.(?:\d+\.)?cls_loss\.")
BOX_REGRESSION = re.compile(r"^roi_heads\.box_predictor\.(?:\d+\.)?bbox_pred\.")
MASK_PREDICTOR = re.compile(r"^roi_heads\.mask_head\.predictor\.")


class SurgeryError(ValueError):
    """A checkpoint that surgery cannot work on (the message says why and what to do)."""


def _is_url(path):
    return "://" in path


def _local_path(path):
    """A local file for ``path``: itself, or what detectron2's PathManager fetches for a URL or
    a registered prefix (``detectron2://``, ``https://``, ``torchvision://``; cached)."""
    if not _is_url(path):
        if not os.path.isfile(path):
            raise SurgeryError(f"Checkpoint '{path}' does not exist.")
        return path
    try:
        local = PathManager.get_local_path(path)
    except Exception as e:  # network, unknown model names, ...
        raise SurgeryError(f"Could not fetch checkpoint '{path}' ({e}).") from e
    if not os.path.isfile(local):  # no handler claimed the prefix: iopath took it as a file name
        raise SurgeryError(
            f"Checkpoint '{path}' does not exist (known URL prefixes: detectron2://, https://, "
            "torchvision://).")
    return local


class _ArraysUnpickler(pickle.Unpickler):
    """Unpickles the numpy arrays and plain containers of a model-zoo .pkl and nothing else (an
    arbitrary pickle can run code; torch.load(weights_only=True) gives .pth files the same
    guard)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # the bytes of protocol-2 pickles (Python 2 era model zoos)
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_pkl(path):
    """A detectron2 model-zoo pickle ({"model": numpy arrays, "__author__": ..., ...}) or a bare
    dict of arrays, with the arrays made tensors."""
    with open(path, "rb") as f:
        data = _ArraysUnpickler(f, encoding="latin1").load()
    if isinstance(data, dict) and data and all(isinstance(v, np.ndarray) for v in data.values()):
        data = {"model": data}
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        arrays = (np.ndarray, np.generic)
        data["model"] = {k: torch.as_tensor(np.asarray(v)) if isinstance(v, arrays) else v
                         for k, v in data["model"].items()}
    return data


def load_checkpoint(path):
    """Load a Detectron2 checkpoint (a dict with a "model" state dict) onto the CPU.

    ``path``: a local ``.pth`` (as tools/train_net.py writes) or detectron2 model-zoo ``.pkl``
    file, or a URL detectron2's PathManager resolves (``detectron2://COCO-Detection/...pkl``,
    ``https://...``, ``torchvision://resnet50``). The numpy arrays of a ``.pkl`` become tensors.
    """
    local = _local_path(path)
    if local.endswith(".pkl"):
        try:
            ckpt = _load_pkl(local)
        except Exception as e:  # pickle errors, refused classes
            raise SurgeryError(
                f"'{path}' is not a Detectron2 checkpoint: a .pkl must be a detectron2 model-zoo "
                f"pickle of numpy arrays ({e}).") from e
        if isinstance(ckpt, dict) and "blobs" in ckpt:
            raise SurgeryError(
                f"'{path}' is a Caffe2 / Detectron1 pickle ('blobs' with Caffe2 names); surgery "
                "needs detectron2 names: use a detectron2 model-zoo checkpoint or a .pth.")
    else:
        try:
            ckpt = torch.load(local, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle / zip errors of arbitrary files
            raise SurgeryError(
                f"'{path}' is not a Detectron2 checkpoint that torch.load can read ({e}).") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise SurgeryError(
            f"'{path}' is not a Detectron2 checkpoint: expected a dict with a 'model' state dict "
            "(as tools/train_net.py writes model_*.pth files).")
    return ckpt


def _num_classes(model):
    """Foreground classes of a checkpoint, from its class-specific layers (None if unknown)."""
    for key, value in model.items():
        if MASK_PREDICTOR.match(key) and key.endswith("weight") and value.shape[0] > 1:
            return value.shape[0]
    for key, value in model.items():
        if BOX_REGRESSION.match(key) and key.endswith("bias") and value.shape[0] > 4:
            return value.shape[0] // 4
    return None


def checkpoint_surgery(ckpt, method, num_classes=None):
    """Apply ``method`` ("remove" or "reset") to a loaded checkpoint.

    Args:
        ckpt (dict): a Detectron2 checkpoint with a "model" state dict.
        num_classes (int or None): the class count of stage two, if it differs.
    Returns:
        (new checkpoint {"model": ...}, report dict with "removed", "kept", "dropped_state").
    """
    if method not in ("remove", "reset"):
        raise SurgeryError(f"Unknown surgery method {method!r}; use 'remove' or 'reset'.")
    model = ckpt["model"]
    classifier = [k for k in model if CLASSIFIER.match(k)]
    if not classifier:
        raise SurgeryError(
            "The checkpoint has no classifier keys (roi_heads.box_predictor[.k].cls_score.*): "
            "it is not an R-CNN with a box predictor, or the classifier was removed already.")
    drop = set(k for k in model if LOSS_STATE.match(k))
    if method == "remove":
        drop |= set(classifier)
    old_classes = _num_classes(model)
    if num_classes is not None:
        for k, v in model.items():
            # the classifier's width depends on the loss, so trust the other layers' count
            if CLASSIFIER.match(k) and old_classes != num_classes:
                drop.add(k)
            if MASK_PREDICTOR.match(k) and v.shape[0] != num_classes:
                drop.add(k)
            if BOX_REGRESSION.match(k) and v.shape[0] > 4 and v.shape[0] != 4 * num_classes:
                drop.add(k)
    new_model = {k: v for k, v in model.items() if k not in drop}
    report = {
        "removed": sorted(drop),
        "kept": len(new_model),
        "dropped_state": sorted(k for k in ckpt if k != "model"),
        "classes": (old_classes, num_classes),
    }
    return {"model": new_model}, report


def save_checkpoint(ckpt, path, overwrite=False):
    """Write ``ckpt`` to ``path`` atomically (:func:`lt_d2.file_io.atomic_write`).

    Refuses to replace an existing file unless ``overwrite``; a failure leaves no partial file.
    """
    if os.path.exists(path) and not overwrite:
        raise SurgeryError(f"'{path}' exists; pass --overwrite (or choose another --out).")
    atomic_write(path, lambda f: torch.save(ckpt, f))


def default_output_path(ckpt_path, method):
    """``<folder>/model_reset_<method>.pth`` beside the input (the eqlv2 repository's names).
    A URL has no folder to write beside: its output must be given."""
    if _is_url(ckpt_path):
        raise SurgeryError(
            f"'{ckpt_path}' is a URL: name the output checkpoint with --out (e.g. --out "
            f"output/model_reset_{method}.pth).")
    return os.path.join(os.path.dirname(os.path.abspath(ckpt_path)), f"model_reset_{method}.pth")
