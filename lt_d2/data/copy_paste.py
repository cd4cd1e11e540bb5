# Copyright (c) lt_d2 contributors.
"""Large-scale jitter and simple copy-paste (Ghiasi et al., CVPR 2021), BACL's stage-one data.

Each training image and a randomly drawn second image go through the same augmentations
(resize by a random scale of a fixed size, crop / pad to that size, flip). A random subset of the
second image's objects is pasted on top of the first: pixels under their masks are replaced,
masks of the objects below lose the covered pixels, objects that end up almost fully covered are
dropped, and every box is recomputed from its mask.
"""
import copy

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.data.common import DatasetFromList
from detectron2.structures import BitMasks, Instances


def large_scale_jitter(image_size, min_scale, max_scale):
    """Resize to a random scale in [min_scale, max_scale] of ``image_size`` (square), crop or
    pad to ``image_size``, and flip horizontally half of the time."""
    return [
        T.ResizeScale(min_scale, max_scale, image_size, image_size),
        T.FixedSizeCrop((image_size, image_size)),
        T.RandomFlip(horizontal=True),
    ]


def paste_instances(dst_image, dst, src_image, src, selected, box_thresh=10, mask_thresh=300):
    """Paste the ``selected`` instances of ``src`` on ``dst``; images are (C, H, W) tensors of
    the same size and instances carry ``gt_masks`` (BitMasks) and ``gt_classes``.

    A destination object stays if its box moved by <= ``box_thresh`` pixels on every side or
    it keeps more than ``mask_thresh`` mask pixels (mmdetection's CopyPaste rule).
    Returns the new image and Instances (boxes recomputed from the masks).
    """
    src = src[selected]
    if len(src) == 0:
        return dst_image, dst
    src_masks = src.gt_masks.tensor
    alpha = src_masks.any(dim=0)
    image = torch.where(alpha[None], src_image, dst_image)
    kept_masks = dst.gt_masks.tensor & ~alpha[None]
    old_boxes = dst.gt_masks.get_bounding_boxes().tensor
    new_boxes = BitMasks(kept_masks).get_bounding_boxes().tensor
    unmoved = ((new_boxes - old_boxes).abs() <= box_thresh).all(dim=1)
    visible = kept_masks.flatten(1).sum(dim=1) > mask_thresh
    keep = (unmoved | visible) & kept_masks.flatten(1).any(dim=1)
    out = Instances(dst.image_size)
    masks = torch.cat([kept_masks[keep], src_masks])
    out.gt_masks = BitMasks(masks)
    out.gt_boxes = out.gt_masks.get_bounding_boxes()
    out.gt_classes = torch.cat([dst.gt_classes[keep], src.gt_classes])
    return image, out


class CopyPasteDatasetMapper:
    """Training mapper: large-scale jitter, then copy-paste from a random other image.

    Args:
        base_mapper (DatasetMapper): maps one dict with the jitter augmentations and bitmasks.
        dataset_dicts (list[dict]): the training dicts the second image is drawn from.
        copy_paste (bool): paste (False: large-scale jitter only).
        max_num_pasted (int): at most this many objects are pasted (100 in BACL).
        keep_masks (bool): keep ``gt_masks`` in the output (Mask R-CNN).
    """

    @configurable
    def __init__(self, *, base_mapper, dataset_dicts, copy_paste=True, max_num_pasted=100,
                 keep_masks=True):
        self.base_mapper = base_mapper
        # serialised once: workers share it instead of one Python list each
        self.dataset = DatasetFromList(dataset_dicts, copy=False, serialize=True)
        self.copy_paste, self.max_num_pasted = copy_paste, max_num_pasted
        self.keep_masks = keep_masks

    @classmethod
    def from_config(cls, cfg, dataset_dicts):
        c = cfg.INPUT.LT
        base = DatasetMapper(
            is_train=True,
            augmentations=large_scale_jitter(c.LSJ.IMAGE_SIZE, c.LSJ.MIN_SCALE, c.LSJ.MAX_SCALE),
            image_format=cfg.INPUT.FORMAT,
            use_instance_mask=True,
            instance_mask_format="bitmask",
            recompute_boxes=True,
        )
        return {"base_mapper": base, "dataset_dicts": dataset_dicts,
                "copy_paste": c.COPY_PASTE.ENABLED, "max_num_pasted": c.COPY_PASTE.MAX_NUM_PASTED,
                "keep_masks": cfg.MODEL.MASK_ON}

    def __call__(self, dataset_dict):
        out = self.base_mapper(copy.deepcopy(dataset_dict))
        if self.copy_paste:
            partner = self.dataset[np.random.randint(len(self.dataset))]
            other = self.base_mapper(copy.deepcopy(partner))
            src = other["instances"]
            if len(src) and other["image"].shape == out["image"].shape:
                count = np.random.randint(0, min(len(src), self.max_num_pasted) + 1)
                order = np.random.permutation(len(src))
                selected = torch.as_tensor(order[:count], dtype=torch.long)
                out["image"], out["instances"] = paste_instances(
                    out["image"], out["instances"], other["image"], src, selected)
        if not self.keep_masks and out["instances"].has("gt_masks"):
            out["instances"].remove("gt_masks")
        return out
