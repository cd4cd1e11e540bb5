# Copyright (c) lt_d2 contributors.
"""Stage-two freezing: only the parameters ``MODEL.LT.TRAINABLE`` names get gradients, and the
losses of heads that no longer train are skipped (:func:`skip_frozen_losses`)."""
import fnmatch
import logging
import os

import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling.proposal_generator import RPN
from detectron2.utils.file_io import PathManager
from torch import nn

from ..modeling.box_predictor import LTFastRCNNOutputLayers
from ..modeling.roi_heads import MaskLossSwitch

logger = logging.getLogger(__name__)


def matches(name, pattern):
    """A parameter name matches a pattern that equals it, is a dotted prefix of it
    ("roi_heads.box_predictor.cls_score"), or matches it as a glob ("*.cls_score.*")."""
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def freeze_all_but(model, patterns):
    """Freeze every parameter of ``model`` that no pattern matches; returns the trainable names.

    Batch-norm layers whose parameters are all frozen become ``FrozenBatchNorm2d``, so their
    running statistics stay as loaded. Raises ValueError for a pattern that matches nothing.
    """
    names = [n for n, _ in model.named_parameters()]
    unmatched = [p for p in patterns if not any(matches(n, p) for n in names)]
    if unmatched:
        raise ValueError(
            f"MODEL.LT.TRAINABLE patterns {unmatched} match no parameter of the model. Parameter "
            f"names look like: {', '.join(names[:3])}, ..., {names[-1]}.")
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(any(matches(name, p) for p in patterns))
        if param.requires_grad:
            trainable.append(name)
    _freeze_batchnorm(model)
    logger.info("Stage two: %d of %d parameter tensors train: %s", len(trainable), len(names),
                ", ".join(trainable))
    return trainable


def _freeze_batchnorm(module):
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in child.parameters()):
            setattr(module, name, FrozenBatchNorm2d.convert_frozen_batchnorm(child))
        else:
            _freeze_batchnorm(child)


def _all_frozen(*modules):
    return not any(p.requires_grad for m in modules for p in m.parameters())


class _LossFreeRPN:
    """Mixed into a detectron2 ``RPN`` (sub)class by :func:`skip_frozen_losses`: ``forward`` is
    detectron2's, so training still gives the training-mode proposals (``PRE/POST_NMS_TOPK_TRAIN``),
    but anchors are not labelled and no loss is computed."""

    def label_and_sample_anchors(self, anchors, gt_instances):
        return None, None

    def losses(self, *args, **kwargs):
        return {}


def _loss_free_class(cls):
    """``LossFree<cls>``: ``cls`` with :class:`_LossFreeRPN`; one class per RPN class, kept as
    an attribute of this module so that models holding it still pickle."""
    name = f"LossFree{cls.__name__}"
    existing = globals().get(name)
    if existing is None or existing.__bases__ != (_LossFreeRPN, cls):
        existing = type(name, (_LossFreeRPN, cls), {"__module__": __name__, "__doc__": cls.__doc__})
        globals()[name] = existing
    return existing


def skip_frozen_losses(model):
    """Turn off the training losses of ``model``'s heads that reach no trainable parameter;
    returns the names of the skipped losses (and logs them).

    A head's loss reaches its own parameters and the backbone's (and, for box regression, the
    box head's), so nothing is skipped while the backbone trains. Otherwise: the RPN's losses
    (``loss_rpn_cls``, ``loss_rpn_loc``) when the proposal generator is a detectron2 ``RPN`` with
    no trainable parameter (its class becomes ``LossFree<RPN class>``, see :class:`_LossFreeRPN`);
    ``loss_box_reg`` when ``bbox_pred`` and the box head are frozen (lt_d2's predictor's
    ``box_reg_loss_on``); the mask head's forward and ``loss_mask`` when it is frozen (lt_d2's ROI
    heads' ``mask_loss_on``). The gradients of the trainable parameters are unchanged, and the
    logged ``total_loss`` is what is optimised.
    """
    backbone = getattr(model, "backbone", None)
    if backbone is None or not _all_frozen(backbone):
        return []
    skipped = []
    rpn = getattr(model, "proposal_generator", None)
    if isinstance(rpn, RPN) and _all_frozen(rpn):
        if not isinstance(rpn, _LossFreeRPN):
            rpn.__class__ = _loss_free_class(type(rpn))
        skipped += ["loss_rpn_cls", "loss_rpn_loc"]
    roi_heads = getattr(model, "roi_heads", None)
    predictors = getattr(roi_heads, "box_predictor", None)
    if predictors is not None:
        cascade = isinstance(predictors, nn.ModuleList)
        heads = roi_heads.box_head if cascade else [roi_heads.box_head]
        for k, (head, predictor) in enumerate(zip(heads, predictors if cascade else [predictors])):
            lt_predictor = isinstance(predictor, LTFastRCNNOutputLayers)
            if lt_predictor and _all_frozen(head, predictor.bbox_pred):
                predictor.box_reg_loss_on = False
                skipped.append(f"loss_box_reg_stage{k}" if cascade else "loss_box_reg")
    if (isinstance(roi_heads, MaskLossSwitch) and roi_heads.mask_on
            and _all_frozen(roi_heads.mask_head)):
        roi_heads.mask_loss_on = False
        skipped.append("loss_mask")
    if skipped:
        logger.info("Stage two: skipping the losses of frozen heads (no trainable parameter "
                    "reaches them; total_loss is what is optimised): %s", ", ".join(skipped))
    return skipped


def check_weights_fit(model, weights_path):
    """Raise ValueError if the checkpoint at ``weights_path`` lacks a frozen tensor of ``model``
    (parameters, batch-norm statistics) or holds it with another shape: frozen layers would keep
    random values. Other buffers (loss and hallucination statistics) start anew in stage two."""
    if not weights_path.endswith(".pth"):
        return  # model-zoo / caffe2 formats: detectron2 converts their names while loading
    local = PathManager.get_local_path(weights_path)
    if not os.path.isfile(local):
        raise FileNotFoundError(
            f"MODEL.WEIGHTS '{weights_path}' does not exist. Stage two loads the stage-one "
            "checkpoint after `python tools/ckpt_surgery.py --ckpt-path ... "
            "--method remove|reset`.")
    state = torch.load(local, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    required = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    for module_name, module in model.named_modules():
        if isinstance(module, (FrozenBatchNorm2d, nn.modules.batchnorm._BatchNorm)):
            for buf_name, buf in module.named_buffers(recurse=False):
                if buf_name != "num_batches_tracked":
                    required[f"{module_name}.{buf_name}"] = buf
    missing, mismatched = [], []
    for name, param in required.items():
        if name not in state:
            missing.append(name)
        elif tuple(state[name].shape) != tuple(param.shape):
            mismatched.append(f"{name} {tuple(state[name].shape)} vs {tuple(param.shape)}")
    if missing or mismatched:
        raise ValueError(
            f"MODEL.WEIGHTS '{weights_path}' does not fit the frozen part of the model: "
            f"{len(missing)} frozen tensors are missing (e.g. {missing[:3]}) and "
            f"{len(mismatched)} have another shape (e.g. {mismatched[:3]}). Use the stage-one "
            "checkpoint of this architecture (after tools/ckpt_surgery.py), or add the layers "
            "to MODEL.LT.TRAINABLE.")
