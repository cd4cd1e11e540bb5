# Copyright (c) lt_d2 contributors.
"""lt_d2's config keys. Call ``add_lt_config(cfg)`` on ``get_cfg()`` before merging a file.

Every key is new (none shadows a detectron2 key); lt_d2 reuses detectron2's own keys where a
feature is only a new value of one (``MODEL.ROI_HEADS.NAME: LTROIHeads``,
``DATALOADER.SAMPLER_TRAIN``, ``MODEL.BACKBONE.NAME: build_tiny_net_fpn_backbone``).
"""
from detectron2.config import CfgNode as CN


def add_tiny_net_config(cfg):
    cfg.MODEL.TINY_NET = CN()
    # Output channels of the four stages res2..res5 (strides 4, 8, 16, 32) of the small
    # from-scratch backbone used for the synthetic dataset (lt_d2/modeling/tiny_backbone.py).
    cfg.MODEL.TINY_NET.CHANNELS = [32, 64, 96, 128]
    # Normalization after every conv: "BN", "GN", "SyncBN", or "" for none.
    cfg.MODEL.TINY_NET.NORM = "BN"
    # Stages the backbone returns (the FPN reads MODEL.FPN.IN_FEATURES among these).
    cfg.MODEL.TINY_NET.OUT_FEATURES = ["res2", "res3", "res4", "res5"]


def add_lt_config(cfg):
    """Add every lt_d2 key, with its default, to ``cfg`` (idempotent)."""
    if "TINY_NET" not in cfg.MODEL:
        add_tiny_net_config(cfg)
    return cfg
