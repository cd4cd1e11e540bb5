# Copyright (c) lt_d2 contributors.
"""Post-hoc score calibration at test time (``TEST.LT.CALIBRATION``): no retraining.

Both rules reweigh the foreground scores of each RoI by a per-class weight from the training
counts and renormalise with the background score, before the score threshold, NMS and the
per-image cap:

* ``norcal`` (NorCal, Pan et al., NeurIPS 2021): weight ``N_c ** -gamma``, ``N_c`` the number
  of training images (or instances) of class c;
* ``logit_adjust`` (Menon et al., ICLR 2021): subtract ``tau * log(prior_c)`` from each
  foreground logit, ``prior_c = N_c / sum_j N_j``; on softmax scores that is the weight
  ``prior_c ** -tau``. The background logit is not adjusted (weight 1): its "prior" is not a
  class count.

Renormalisation keeps each row's total (1 for a softmax), so exponent 0 is the identity, bit for
bit. A class with no training example is counted as one (the floor ``MIN_COUNT``): its weight is
the largest a class can get, instead of an infinite one.

The rules need a real background probability, so they apply only to losses that declare
``scores_have_background`` (softmax-style and objectness scores: softmax CE, Seesaw, BAGS, FCBL,
sigmoid CE, EQLv2, ACSL); the others (EQL, DB, Federated: a zero or untrained background column)
are refused when the model is built.
"""
import logging

import torch
from torch import nn

from .losses.base import CLS_LOSS_REGISTRY, default_class_stats

logger = logging.getLogger(__name__)

METHODS = ("none", "norcal", "logit_adjust")
COUNTS = ("image", "instance")
# the TEST.LT.CALIBRATION key that holds each method's exponent
EXPONENT_KEYS = {"norcal": "GAMMA", "logit_adjust": "TAU"}
MIN_COUNT = 1.0  # the floor of a class's training count (a class never seen counts once)


def calibration_weights(method, counts, exponent):
    """(K,) float32 weights of the foreground classes for ``counts`` (K,) training counts."""
    if method not in METHODS[1:]:
        raise ValueError(f"Unknown calibration method {method!r}; use one of {METHODS[1:]}.")
    counts = torch.as_tensor(counts, dtype=torch.float64).clamp(min=MIN_COUNT)
    if method == "logit_adjust":
        counts = counts / counts.sum()  # the prior; the sum is taken after the floor
    return counts.pow(-float(exponent)).to(torch.float32)


def calibrate_probs(probs, class_weights):
    """(R, K+1) scores, background last -> calibrated (R, K+1) scores.

    Foreground scores are multiplied by ``class_weights`` (K,), then every score of a row,
    background included, by the factor that restores the row's total. With weights all 1 the
    factor is exactly 1 and the scores come back unchanged.
    """
    foreground, background = probs[:, :-1], probs[:, -1:]
    weighted = foreground * class_weights
    total = foreground.sum(dim=1, keepdim=True) + background
    calibrated_total = weighted.sum(dim=1, keepdim=True) + background
    # a row of zeros stays zeros (0 / 0 would make it NaN)
    factor = torch.where(calibrated_total > 0, total / calibrated_total,
                         torch.ones_like(total))
    return torch.cat([weighted * factor, background * factor], dim=1)


class ScoreCalibration(nn.Module):
    """Calibrates (R, K+1) scores with the weights of ``method`` for ``counts``.

    Args:
        method (str): "norcal" or "logit_adjust".
        counts (Tensor or array): (K,) training counts per class (images or instances).
        exponent (float): NorCal's gamma or logit adjustment's tau.
        count_kind (str): what ``counts`` counts ("image" / "instance"), for the log.

    The weights are a non-persistent buffer: they follow the model's device but are not part
    of its checkpoint, which therefore loads with any calibration (or none).
    """

    def __init__(self, method, counts, exponent, count_kind="image"):
        super().__init__()
        self.method, self.exponent, self.count_kind = method, float(exponent), count_kind
        self.register_buffer("class_weights", calibration_weights(method, counts, exponent),
                             persistent=False)

    def forward(self, probs):
        return calibrate_probs(probs, self.class_weights.to(probs.dtype))

    def extra_repr(self):
        return f"method={self.method}, exponent={self.exponent}, count={self.count_kind}"


def losses_with_background():
    """Names of the registered losses whose scores hold a real background probability."""
    return sorted(name for name, cls in CLS_LOSS_REGISTRY
                  if cls.scores_have_background)


def check_calibration_applies(method, cls_loss):
    """Raise, naming the loss and those it applies to, if ``method`` cannot calibrate the
    scores of ``cls_loss``."""
    if method == "none" or cls_loss.scores_have_background:
        return
    raise ValueError(
        f"TEST.LT.CALIBRATION.METHOD {method!r} renormalises foreground scores with the "
        f"background probability, which {type(cls_loss).__name__} does not give (its scores "
        f"have no real background column). It applies to: {', '.join(losses_with_background())}."
        " Set TEST.LT.CALIBRATION.METHOD none for this model.")


def calibration_config(cfg):
    """(method, exponent, count kind) of ``cfg.TEST.LT.CALIBRATION``, checked."""
    calib = cfg.TEST.LT.CALIBRATION
    if calib.METHOD not in METHODS:
        raise ValueError(f"Unknown TEST.LT.CALIBRATION.METHOD={calib.METHOD!r}; use one of "
                         f"{', '.join(map(repr, METHODS))}.")
    if calib.COUNT not in COUNTS:
        raise ValueError(f"Unknown TEST.LT.CALIBRATION.COUNT={calib.COUNT!r}; use 'image' "
                         "(training images per class) or 'instance' (training instances).")
    if calib.METHOD == "none":
        return calib.METHOD, 0.0, calib.COUNT
    return calib.METHOD, float(calib.get(EXPONENT_KEYS[calib.METHOD])), calib.COUNT


def training_counts(class_stats, count_kind, method):
    """(K,) counts of ``count_kind`` from ``class_stats`` (object, callable or None)."""
    stats = class_stats() if callable(class_stats) else class_stats
    if stats is None:
        raise RuntimeError(
            f"TEST.LT.CALIBRATION.METHOD {method!r} needs the per-class training counts of "
            "DATASETS.TRAIN, which are unavailable: make sure the training annotations exist "
            "(see datasets/README.md), or set TEST.LT.CALIBRATION.METHOD none.")
    counts = stats.image_count if count_kind == "image" else stats.instance_count
    counts = torch.as_tensor(counts, dtype=torch.float64)
    unseen = int((counts < MIN_COUNT).sum())
    if unseen:
        logger.warning("Score calibration: %d classes have no training %s; they count as %g.",
                       unseen, count_kind, MIN_COUNT)
    return counts


def build_score_calibration(cfg, cls_loss, class_stats=None):
    """The ``ScoreCalibration`` of ``cfg.TEST.LT.CALIBRATION`` for a predictor scored by
    ``cls_loss``, or None for method "none". ``class_stats``: as in
    :func:`~lt_d2.modeling.losses.build_cls_loss` (default: those of ``DATASETS.TRAIN``)."""
    method, exponent, count_kind = calibration_config(cfg)
    if method == "none":
        return None
    check_calibration_applies(method, cls_loss)
    if class_stats is None:
        class_stats = default_class_stats(cfg, "score calibration cannot be applied.")
    counts = training_counts(class_stats, count_kind, method)
    if len(counts) != cls_loss.num_classes:
        raise ValueError(f"TEST.LT.CALIBRATION: the training statistics have {len(counts)} "
                         f"classes, the model {cls_loss.num_classes}.")
    calibration = ScoreCalibration(method, counts, exponent, count_kind)
    logger.info("Score calibration at inference: %s", calibration.extra_repr())
    return calibration


def calibration_record(cfg):
    """The calibration of ``cfg`` for an evaluation record, or None for method "none"."""
    method, exponent, count_kind = calibration_config(cfg)
    if method == "none":
        return None
    return {"method": method, "exponent": exponent, "count": count_kind}
