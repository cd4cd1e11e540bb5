# Copyright (c) lt_d2 contributors.
"""Balanced group softmax (BAGS, Li et al., CVPR 2020), as in the EQLv2 authors' port."""
import torch
from detectron2.config import configurable
from torch.nn import functional as F

from ...grouping import BAGS_BIN_SPLIT, bags_bins
from .base import CLS_LOSS_REGISTRY, LTClassificationLoss, require, train_stat_args


class GroupLayout:
    """Logit columns of the group softmax: each non-empty foreground group g holds
    [others, its classes in id order]; the last group is [foreground, background].
    In all K + 1 + G columns for G groups (background group included)."""

    def __init__(self, groups):
        self.num_classes = len(groups)
        self.groups = sorted(set(groups))
        self.columns, self.class_column, offset = [], torch.zeros(len(groups), dtype=torch.long), 0
        for g in self.groups:
            members = [c for c, cg in enumerate(groups) if cg == g]
            self.columns.append((offset, torch.tensor(members)))
            self.class_column[members] = torch.arange(offset + 1, offset + 1 + len(members))
            offset += len(members) + 1
        self.bg_offset = offset
        self.num_logits = offset + 2


def group_softmax_loss(logits, gt_classes, layout, others_ratio=8.0):
    """sum_g sum_i w_gi CE(z_g,i, l_gi) / max(sum_i w_gi, 1).

    In a foreground group, RoIs of its classes are labelled by their position (1..n_g) and all
    others 0 ("others"); a group with no such RoI gets no loss, otherwise its RoIs plus
    int(others_ratio * #RoIs) randomly chosen others (all if fewer) count. In the background
    group every RoI counts, labelled 1 for background and 0 for foreground.
    """
    num_classes = layout.num_classes
    is_fg = gt_classes < num_classes
    loss = logits.sum() * 0.0
    class_column = layout.class_column.to(logits.device)
    # each RoI's logit column (-1 for background), the same for every group
    column = torch.where(is_fg, class_column[gt_classes.clamp(max=num_classes - 1)], -1)
    for offset, members in layout.columns:
        n_g = len(members)
        group_logits = logits[:, offset: offset + n_g + 1]
        in_group = (column > offset) & (column <= offset + n_g)
        num_in = int(in_group.sum())
        if num_in == 0:
            continue
        labels = torch.where(in_group, column - offset, torch.zeros_like(column))
        others = torch.nonzero(~in_group).flatten()
        keep = in_group.clone()
        keep[others[torch.randperm(len(others), device=logits.device)[:int(others_ratio * num_in)]]] = True
        ce = F.cross_entropy(group_logits[keep], labels[keep], reduction="sum")
        loss = loss + ce / max(int(keep.sum()), 1)
    bg_logits = logits[:, layout.bg_offset: layout.bg_offset + 2]
    loss = loss + F.cross_entropy(bg_logits, (~is_fg).long(), reduction="sum") / max(len(gt_classes), 1)
    return loss


def group_softmax_probs(logits, layout, normalize=True):
    """(R, K+1) scores: q_c = softmax within c's group at c's position; p_bg = P(background).

    The official merge is p_c = q_c P(foreground), whose rows do not sum to 1 (each group adds
    up to 1 - P(others)). With ``normalize`` the q_c are divided by their sum first, so that
    p_c = P(foreground) q_c / sum q and every row is a distribution; the ranking of classes
    within a RoI is the same either way.
    """
    bg = logits[:, layout.bg_offset: layout.bg_offset + 2].softmax(dim=1)
    probs = logits.new_zeros(logits.shape[0], layout.num_classes + 1)
    for offset, members in layout.columns:
        group = logits[:, offset: offset + len(members) + 1].softmax(dim=1)
        probs[:, members.to(logits.device)] = group[:, 1:]
    if normalize:
        probs[:, :-1] /= probs[:, :-1].sum(dim=1, keepdim=True).clamp(min=1e-12)
    probs[:, :-1] *= bg[:, :1]
    probs[:, -1] = bg[:, 1]
    return probs


@CLS_LOSS_REGISTRY.register()
class GroupSoftmaxLoss(LTClassificationLoss):
    """BAGS: classes grouped by training instances, a softmax per group with an "others"
    category, and a foreground/background group.

    Args:
        num_classes (int): K. instance_count (sequence or None): (K,) training instances.
        bin_split (tuple): group boundaries on instance counts (10, 100, 1000).
        others_ratio (float): "others" RoIs kept per in-group RoI (beta = 8).
        normalize_scores (bool): see :func:`group_softmax_probs` (False: the official merge).

    ``forward(logits (R, K+1+G), gt_classes (R,)) -> scalar``. Scores: within-group softmax
    times P(foreground).

    The layout (each class's group) is the persistent buffer ``class_group`` (K,), so a
    checkpoint holds it and evaluation needs no training statistics. Built without them, the
    loss assumes every group of ``bin_split`` non-empty (as on LVIS) to size the classifier, and
    takes the layout from the checkpoint when it is loaded.
    """

    scores_have_background = True  # (TEST.LT.CALIBRATION applies)

    @configurable
    def __init__(self, *, num_classes, instance_count=None, bin_split=BAGS_BIN_SPLIT,
                 others_ratio=8.0, normalize_scores=True):
        super().__init__(num_classes)
        self.bin_split, self.others_ratio = tuple(bin_split), others_ratio
        self.normalize_scores = normalize_scores
        self.layout = None
        groups = torch.full((num_classes,), -1, dtype=torch.long)  # -1: not known yet
        if instance_count is not None:
            groups = torch.tensor(bags_bins(instance_count, self.bin_split), dtype=torch.long)
            self.layout = GroupLayout(groups.tolist())
            self._num_logits = self.layout.num_logits
        else:
            # K classes, one "others" column per foreground group, 2 background-group columns
            self._num_logits = num_classes + len(self.bin_split) + 1 + 2
        self.register_buffer("class_group", groups)

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
        groups = self.class_group.tolist()
        if min(groups, default=0) < 0:
            return  # saved by a model built without statistics, never filled
        layout = GroupLayout(groups)
        if layout.num_logits != self._num_logits:
            error_msgs.append(
                f"The BAGS layout in the checkpoint needs {layout.num_logits} logits, but the "
                f"classifier was built with {self._num_logits}: some group of "
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
