# Copyright (c) lt_d2 contributors.
"""Balanced group softmax (BAGS, Li et al., CVPR 2020), as in the EQLv2 authors' port."""
import torch
from detectron2.config import configurable
from torch.nn import functional as F

from ...grouping import BAGS_BIN_SPLIT, bags_bins
from .base import CLS_LOSS_REGISTRY, LTClassificationLoss, require, train_stat_args


class BinLayout:
    """Logit columns of the group softmax, one softmax per BAGS bin: each non-empty bin b holds
    [others, its classes in id order]; the last two columns are [foreground, background].

    Args:
        class_bin (list[int]): the bin of each of the K classes (:func:`lt_d2.grouping.bags_bins`).
    """

    def __init__(self, class_bin):
        self.num_classes = len(class_bin)
        self.bins = sorted(set(class_bin))
        self.columns, offset = [], 0
        self.class_column = torch.zeros(len(class_bin), dtype=torch.long)
        for b in self.bins:
            members = [c for c, cb in enumerate(class_bin) if cb == b]
            self.columns.append((offset, torch.tensor(members)))
            self.class_column[members] = torch.arange(offset + 1, offset + 1 + len(members))
            offset += len(members) + 1
        self.bg_offset = offset
        self.num_logits = self.num_logits_for(self.num_classes, len(self.bins))

    @staticmethod
    def num_logits_for(num_classes, num_bins):
        """K class columns, one "others" column per non-empty bin, 2 foreground/background."""
        return num_classes + num_bins + 2


def group_softmax_loss(logits, gt_classes, layout, others_ratio=8.0):
    """sum_b sum_i w_bi CE(z_b,i, l_bi) / max(sum_i w_bi, 1), plus the foreground/background CE.

    In the softmax of bin b, RoIs of its classes are labelled by their position (1..n_b) and all
    others 0 ("others"); a bin with no such RoI gets no loss, otherwise its RoIs plus
    int(others_ratio * #RoIs) randomly chosen others (all if fewer) count. In the
    foreground/background softmax every RoI counts, labelled 1 for background and 0 for
    foreground. ``layout``: a :class:`BinLayout`.
    """
    num_classes = layout.num_classes
    is_fg = gt_classes < num_classes
    loss = logits.sum() * 0.0
    class_column = layout.class_column.to(logits.device)
    # each RoI's logit column (-1 for background), the same for every bin
    column = torch.where(is_fg, class_column[gt_classes.clamp(max=num_classes - 1)], -1)
    for offset, members in layout.columns:
        n_b = len(members)
        bin_logits = logits[:, offset: offset + n_b + 1]
        in_bin = (column > offset) & (column <= offset + n_b)
        num_in = int(in_bin.sum())
        if num_in == 0:
            continue
        labels = torch.where(in_bin, column - offset, torch.zeros_like(column))
        others = torch.nonzero(~in_bin).flatten()
        keep = in_bin.clone()
        drawn = torch.randperm(len(others), device=logits.device)[:int(others_ratio * num_in)]
        keep[others[drawn]] = True
        ce = F.cross_entropy(bin_logits[keep], labels[keep], reduction="sum")
        loss = loss + ce / max(int(keep.sum()), 1)
    bg_logits = logits[:, layout.bg_offset: layout.bg_offset + 2]
    loss = loss + F.cross_entropy(bg_logits, (~is_fg).long(),
                                  reduction="sum") / max(len(gt_classes), 1)
    return loss


def group_softmax_probs(logits, layout, normalize=True):
    """(R, K+1) scores: q_c = softmax within c's bin at c's position; p_bg = P(background).

    The official merge is p_c = q_c P(foreground), whose rows do not sum to 1 (each bin adds
    up to 1 - P(others)). With ``normalize`` the q_c are divided by their sum first, so that
    p_c = P(foreground) q_c / sum q and every row is a distribution; the ranking of classes
    within a RoI is the same either way.
    """
    bg = logits[:, layout.bg_offset: layout.bg_offset + 2].softmax(dim=1)
    probs = logits.new_zeros(logits.shape[0], layout.num_classes + 1)
    for offset, members in layout.columns:
        in_bin = logits[:, offset: offset + len(members) + 1].softmax(dim=1)
        probs[:, members.to(logits.device)] = in_bin[:, 1:]
    if normalize:
        probs[:, :-1] /= probs[:, :-1].sum(dim=1, keepdim=True).clamp(min=1e-12)
    probs[:, :-1] *= bg[:, :1]
    probs[:, -1] = bg[:, 1]
    return probs


@CLS_LOSS_REGISTRY.register()
class GroupSoftmaxLoss(LTClassificationLoss):
    """BAGS: classes binned by training instances, a softmax per bin with an "others"
    category, and a foreground/background softmax.

    Args:
        num_classes (int): K. instance_count (sequence or None): (K,) training instances.
        bin_split (tuple): bin boundaries on instance counts (10, 100, 1000).
        others_ratio (float): "others" RoIs kept per in-bin RoI (beta = 8).
        normalize_scores (bool): see :func:`group_softmax_probs` (False: the official merge).

    ``forward(logits (R, K+B+2), gt_classes (R,)) -> scalar`` for B non-empty bins. Scores:
    within-bin softmax times P(foreground).

    The layout (each class's bin) is the persistent buffer ``class_group`` (K,; the name of
    the first checkpoints that held it), so a checkpoint holds it and evaluation needs no
    training statistics. Built without them, the loss assumes every bin of ``bin_split``
    non-empty (as on LVIS) to size the classifier, and takes the layout from the checkpoint
    when it is loaded.
    """

    scores_have_background = True  # (TEST.LT.CALIBRATION applies)

    @configurable
    def __init__(self, *, num_classes, instance_count=None, bin_split=BAGS_BIN_SPLIT,
                 others_ratio=8.0, normalize_scores=True):
        super().__init__(num_classes)
        self.bin_split, self.others_ratio = tuple(bin_split), others_ratio
        self.normalize_scores = normalize_scores
        self.layout = None
        class_bin = torch.full((num_classes,), -1, dtype=torch.long)  # -1: not known yet
        if instance_count is not None:
            class_bin = torch.tensor(bags_bins(instance_count, self.bin_split), dtype=torch.long)
            self.layout = BinLayout(class_bin.tolist())
            self._num_logits = self.layout.num_logits
        else:
            self._num_logits = BinLayout.num_logits_for(num_classes, len(self.bin_split) + 1)
        self.register_buffer("class_group", class_bin)

    @classmethod
    def from_config(cls, cfg, num_classes, class_stats=None):
        c = cfg.MODEL.LT.BAGS
        return {
            "num_classes": num_classes,
            **train_stat_args(cfg, class_stats, instance_count="instance_count"),
            "bin_split": c.BIN_SPLIT, "others_ratio": c.OTHERS_RATIO,
            "normalize_scores": c.NORMALIZE_SCORES,
        }

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "class_group"
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if key not in state_dict:
            # a checkpoint from before the layout was stored (or of another loss, as a BAGS
            # stage-two init): keep the layout of the training statistics
            if self.layout is not None and key in missing_keys:
                missing_keys.remove(key)
            return
        class_bin = self.class_group.tolist()
        if min(class_bin, default=0) < 0:
            return  # saved by a model built without statistics, never filled
        layout = BinLayout(class_bin)
        if layout.num_logits != self._num_logits:
            error_msgs.append(
                f"The BAGS layout in the checkpoint needs {layout.num_logits} logits, but the "
                f"classifier was built with {self._num_logits}: some bin of "
                f"MODEL.LT.BAGS.BIN_SPLIT={list(self.bin_split)} is empty in its training set. "
                "Build the model with the training annotations (DATASETS.TRAIN) available."
            )
            return
        self.layout = layout

    def _layout(self):
        return require(self.layout, "per-class instance counts (or a checkpoint with the BAGS "
                                    "layout, buffer 'class_group')")

    @property
    def num_logits(self):
        return self._num_logits

    def forward(self, logits, gt_classes):
        return group_softmax_loss(logits, gt_classes, self._layout(), self.others_ratio)

    def probs(self, logits):
        return group_softmax_probs(logits, self._layout(), self.normalize_scores)

    def extra_repr(self):
        return f"num_classes={self.num_classes}, bin_split={self.bin_split}, " \
               f"others_ratio={self.others_ratio}"
