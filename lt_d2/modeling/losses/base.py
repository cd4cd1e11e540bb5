# Copyright (c) lt_d2 contributors.
"""The interface every ROI classification loss of lt_d2 implements, and its registry."""
import logging
import math

import torch
from detectron2.config import configurable
from detectron2.utils.registry import Registry
from torch import nn

from .utils import float32_math, upcast

logger = logging.getLogger(__name__)

CLS_LOSS_REGISTRY = Registry("LT_CLS_LOSS")
CLS_LOSS_REGISTRY.__doc__ = """
ROI classification losses, selected by MODEL.LT.CLS_LOSS. Each is an LTClassificationLoss built
as ``Loss(cfg, num_classes=K)`` (or with keyword arguments, without a config).
"""


class LTClassificationLoss(nn.Module):
    """A classification loss for K foreground classes that also defines its logits and scores.

    Subclasses set:

    * ``num_logits``: how many logits the classifier must output (e.g. K+1 for softmax with a
      background column, K for EQL, K+2 for Seesaw);
    * ``forward(logits, gt_classes)``: the loss (a scalar, or a dict of ``loss_*`` scalars) for
      (R, num_logits) logits and (R,) labels in [0, K], K = background;
    * ``probs(logits)``: (R, K+1) per-class scores with the background last, used at inference
      and averaged over Cascade stages;

    and declare, as class attributes, what the models around them may rely on (read by the box
    predictor, the ROI heads and the multi-label classifier instead of probing for methods):

    * ``prior_prob``: if not None, the classifier bias starts at log(p / (1 - p)) (sigmoid losses);
    * ``multi_label``: ``forward`` also takes (R, K) multi-hot targets (the multi-label classifier
      needs it);
    * ``reports_per_class_accuracy``: :meth:`per_class_accuracy` returns the (K,) running
      accuracy of each class (BACL's hallucinator draws classes by it);
    * ``scores_have_background``: the last column of ``probs`` is a real background probability
      (softmax-style and objectness scores), so the class scores can be renormalised against it;
      False where it is a constant 0 or an untrained column.

    Mixed precision: calling a loss casts the logits to float32 and turns autocast off around
    ``forward``, so the loss math and the state buffers (always float32) are those of the
    float32 computation on the same, rounded, logits; the gradient flows back to the logits in
    their own dtype (float16 / bfloat16 under autocast).
    """

    prior_prob = None
    multi_label = False
    reports_per_class_accuracy = False
    scores_have_background = True

    @configurable
    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes

    def __call__(self, logits, *args, **kwargs):
        with float32_math(logits):
            return super().__call__(upcast(logits), *args, **kwargs)

    @classmethod
    def from_config(cls, cfg, num_classes, class_stats=None):
        """Keyword arguments of ``__init__`` from a config; losses with hyper-parameters extend it.
        ``class_stats``: see :func:`build_cls_loss` (losses that use training statistics pass
        it to :func:`train_stat_args`)."""
        return {"num_classes": num_classes}

    @property
    def num_logits(self):
        return self.num_classes + 1

    def probs(self, logits):
        return logits.softmax(dim=-1)

    def per_class_accuracy(self):
        """(K,) running accuracy of each class; only where ``reports_per_class_accuracy``."""
        raise NotImplementedError(f"{type(self).__name__} keeps no per-class accuracy "
                                  "(reports_per_class_accuracy is False).")

    def init_classifier_(self, layer):
        """Set the classifier's bias to this loss's prior, if it has one."""
        if self.prior_prob is not None and getattr(layer, "bias", None) is not None:
            nn.init.constant_(layer.bias, -math.log((1 - self.prior_prob) / self.prior_prob))

    def extra_repr(self):
        return f"num_classes={self.num_classes}"

    def __init_subclass__(cls, **kwargs):
        # The loss only trains: TorchScript export of a model (which compiles every submodule's
        # forward) compiles probs() and leaves forward() as a stub that raises if called.
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__:
            torch.jit.unused(cls.forward)


# Where the losses' training statistics come from when a caller passes none: a function
# ``(cfg, consequence) -> ClassStats or None``. The data layer installs it (lt_d2/__init__.py),
# so the statistics flow into the model and lt_d2.modeling never imports lt_d2.data.
_train_stats_source = None


def set_train_stats_source(source):
    """Install ``source(cfg, consequence)``, the default provider of training statistics."""
    global _train_stats_source
    _train_stats_source = source


def default_class_stats(cfg, consequence="training with this loss will fail."):
    """A callable that returns the training statistics of ``cfg`` (or None) when called, and
    only then: losses that need none never read the training annotations. ``consequence``:
    what the warning says goes without them."""

    def class_stats():
        if _train_stats_source is None:
            return None
        return _train_stats_source(cfg, consequence)

    return class_stats


# Names MODEL.LT.CLS_LOSS had before every registered loss ended in "Loss"; configs may keep them.
DEPRECATED_CLS_LOSS_NAMES = {
    "SoftmaxCE": "SoftmaxCELoss",
    "SigmoidCE": "SigmoidCELoss",
    "FCBLoss": "FCBLLoss",
}
_deprecation_noted = set()


def resolve_cls_loss_name(name):
    """The registered name for a value of ``MODEL.LT.CLS_LOSS`` (deprecated names map to their
    new ones, with a one-line note); KeyError naming the registered losses for an unknown one."""
    if name in DEPRECATED_CLS_LOSS_NAMES:
        new = DEPRECATED_CLS_LOSS_NAMES[name]
        if name not in _deprecation_noted:  # once, not once per Cascade stage
            _deprecation_noted.add(name)
            logger.warning("MODEL.LT.CLS_LOSS=%s is deprecated; use %s (same loss).", name, new)
        name = new
    if name not in CLS_LOSS_REGISTRY:
        registered = ", ".join(sorted(k for k, _ in CLS_LOSS_REGISTRY))
        raise KeyError(f"Unknown MODEL.LT.CLS_LOSS={name!r}. Registered losses: {registered}.")
    return name


def build_cls_loss(cfg, num_classes, class_stats=None):
    """The loss named by ``cfg.MODEL.LT.CLS_LOSS`` for ``num_classes`` foreground classes.

    ``class_stats``: the training class statistics (an object with the fields of
    ``lt_d2.data.class_stats.ClassStats``), or a function returning them or None, called once
    and only by losses that use them; by default those of ``cfg.DATASETS.TRAIN``.
    """
    name = resolve_cls_loss_name(cfg.MODEL.LT.CLS_LOSS)
    return CLS_LOSS_REGISTRY.get(name)(cfg, num_classes=num_classes, class_stats=class_stats)


def train_stat_args(cfg, class_stats=None, **fields):
    """Keyword arguments ``{arg: stats.<field>}`` from the training class statistics, each None
    when they are unavailable: evaluation does not need them, so a config whose training json
    is absent still builds (and :func:`require` explains the failure if it trains).

    ``class_stats``: as in :func:`build_cls_loss`; None: those of ``cfg.DATASETS.TRAIN``."""
    if class_stats is None:
        class_stats = default_class_stats(cfg)
    stats = class_stats() if callable(class_stats) else class_stats
    return {arg: None if stats is None else getattr(stats, field) for arg, field in fields.items()}


def require(tensor, what):
    """``tensor``, or a RuntimeError naming the missing training statistic ``what`` and the fix."""
    if tensor is None:
        raise RuntimeError(
            f"This loss needs the {what} of the training set, which were unavailable when it was "
            "built: make sure the files of DATASETS.TRAIN exist (see datasets/README.md)."
        )
    return tensor
