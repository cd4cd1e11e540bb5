# Copyright (c) lt_d2 contributors.
"""Multi-label image classification (the DB-loss project's model) as a detectron2 meta-arch.

backbone -> pooled-FC neck (global average pool, FC, BN1d, dropout) -> linear head, one sigmoid
output per class. The loss is any registered classification loss that takes multi-hot targets
(``multi_label = True``; the DistributionBalancedLoss variants cover BCE, focal, CB, inverse
frequency, re-balanced and the full DB loss).
"""
import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from torch import nn

from .losses import build_cls_loss

__all__ = ["MultiLabelClassifier", "PooledFCNeck"]


class PooledFCNeck(nn.Sequential):
    """Global average pool -> Linear(in, out) -> BatchNorm1d -> Dropout (the project's PFC).

    ``init``: "pytorch" keeps nn.Linear's default initialisation of the FC; "kaiming_fan_out" is
    the project's (kaiming-normal weights in fan-out mode, bias 0).
    """

    INITS = ("pytorch", "kaiming_fan_out")

    def __init__(self, in_channels, out_channels, dropout, init="pytorch"):
        if init not in self.INITS:
            raise ValueError(f"Unknown MODEL.LT.MULTILABEL.NECK_INIT={init!r}; use one of "
                             f"{', '.join(map(repr, self.INITS))}.")
        fc = nn.Linear(in_channels, out_channels)
        if init == "kaiming_fan_out":
            nn.init.kaiming_normal_(fc.weight, mode="fan_out")
            nn.init.zeros_(fc.bias)
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            fc,
            nn.BatchNorm1d(out_channels),
            nn.Dropout(dropout),
        )
        self.out_channels = out_channels


@META_ARCH_REGISTRY.register()
class MultiLabelClassifier(nn.Module):
    """Inputs: detectron2 dicts with "image" (C, H, W; all of one size) and, in training,
    "labels" ((K,) 0/1). Training returns ``{"loss_cls": ...}``; inference returns one
    ``{"scores": (K,) sigmoid probabilities}`` per image.
    """

    @configurable
    def __init__(self, *, backbone: Backbone, in_feature, neck, loss, pixel_mean, pixel_std):
        super().__init__()
        self.backbone = backbone
        self.in_feature = in_feature
        self.neck = neck
        self.loss = loss
        self.cls_score = nn.Linear(neck.out_channels, loss.num_logits)
        # the project's head init; a loss with a prior (focal-style) then sets the bias
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.zeros_(self.cls_score.bias)
        loss.init_classifier_(self.cls_score)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.LT.MULTILABEL
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        if c.IN_FEATURE not in shapes:
            raise ValueError(
                f"MODEL.LT.MULTILABEL.IN_FEATURE={c.IN_FEATURE!r} is not an output of the backbone "
                f"(it returns {sorted(shapes)}); set it to one of them, or add it to the "
                "backbone's OUT_FEATURES."
            )
        loss = build_cls_loss(cfg, c.NUM_CLASSES)
        if not loss.multi_label:
            raise ValueError(
                f"MODEL.LT.CLS_LOSS={cfg.MODEL.LT.CLS_LOSS} does not take multi-label targets. "
                "Use DistributionBalancedLoss (MODEL.LT.DB.* selects BCE, focal, CB, inv, "
                "sqrt_inv, rebalance or the full DB loss)."
            )
        return {
            "backbone": backbone,
            "in_feature": c.IN_FEATURE,
            "neck": PooledFCNeck(shapes[c.IN_FEATURE].channels, c.NECK_DIM, c.DROPOUT,
                                 c.NECK_INIT),
            "loss": loss,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def forward(self, batched_inputs):
        images = torch.stack([x["image"].to(self.device) for x in batched_inputs])
        images = (images - self.pixel_mean) / self.pixel_std
        logits = self.cls_score(self.neck(self.backbone(images)[self.in_feature]))
        if self.training:
            if any("labels" not in x for x in batched_inputs):
                raise ValueError("MultiLabelClassifier needs 'labels' in every training input; "
                                 "train with MultiLabelDatasetMapper.")
            targets = torch.stack([x["labels"] for x in batched_inputs]).to(logits)
            return {"loss_cls": self.loss(logits, targets)}
        return [{"scores": s} for s in self.predict_probs(logits)]

    def predict_probs(self, logits):
        return logits.sigmoid()
