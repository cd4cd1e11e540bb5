# Copyright (c) lt_d2 contributors.
"""Large-scale jitter + copy-paste (BACL's representation stage data)."""
import os

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.structures import BitMasks, Instances

from lt_d2.config import add_lt_config
from lt_d2.data import load_lt_json
from lt_d2.data.copy_paste import CopyPasteDatasetMapper, paste_instances


def _instances(masks, classes, size=(20, 20)):
    inst = Instances(size)
    inst.gt_masks = BitMasks(torch.stack(masks))
    inst.gt_boxes = inst.gt_masks.get_bounding_boxes()
    inst.gt_classes = torch.tensor(classes)
    return inst


def _box_mask(x0, y0, x1, y1, size=(20, 20)):
    m = torch.zeros(size, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_paste_covers_pixels_masks_and_drops_hidden_objects():
    dst = _instances([_box_mask(0, 0, 4, 4), _box_mask(10, 10, 20, 20)], [1, 2])
    src = _instances([_box_mask(0, 0, 5, 5), _box_mask(10, 0, 20, 10)], [3, 4])
    dst_img = torch.zeros(3, 20, 20, dtype=torch.uint8)
    src_img = torch.full((3, 20, 20), 255, dtype=torch.uint8)
    image, out = paste_instances(dst_img, dst, src_img, src, torch.tensor([0, 1]),
                                 box_thresh=1, mask_thresh=5)
    alpha = src.gt_masks.tensor.any(0)
    assert torch.equal(image[0], torch.where(alpha, 255, 0).to(torch.uint8))
    # object 1 lies under the pasted square: dropped; object 2 untouched: kept
    assert out.gt_classes.tolist() == [2, 3, 4]
    assert torch.equal(out.gt_boxes.tensor, out.gt_masks.get_bounding_boxes().tensor)
    assert not (out.gt_masks.tensor[0] & alpha).any()


def test_partly_covered_object_keeps_its_visible_part_and_a_tight_box():
    dst = _instances([_box_mask(0, 0, 20, 10)], [1])
    src = _instances([_box_mask(0, 0, 10, 10)], [2])
    img = torch.zeros(3, 20, 20, dtype=torch.uint8)
    _, out = paste_instances(img, dst, img, src, torch.tensor([0]), box_thresh=1, mask_thresh=5)
    assert out.gt_classes.tolist() == [1, 2]
    assert out.gt_boxes.tensor[0].tolist() == [10.0, 0.0, 20.0, 10.0]


def test_mapper_gives_fixed_size_images_with_consistent_boxes(tiny_root):
    root = str(tiny_root / "lt_synthetic")
    dicts = load_lt_json(os.path.join(root, "annotations", "lt_synthetic_train.json"), root + "/")
    cfg = add_lt_config(get_cfg())
    cfg.INPUT.LT.LSJ.ENABLED = cfg.INPUT.LT.COPY_PASTE.ENABLED = True
    cfg.INPUT.LT.LSJ.IMAGE_SIZE = 64
    cfg.MODEL.MASK_ON = True
    mapper = CopyPasteDatasetMapper(cfg, dicts)
    np.random.seed(0)  # detectron2's augmentations draw from numpy's global RNG
    total = 0
    for d in dicts[:20]:
        out = mapper(d)
        inst = out["instances"]
        assert out["image"].shape == (3, 64, 64)
        assert torch.equal(inst.gt_boxes.tensor, inst.gt_masks.get_bounding_boxes().tensor)
        assert ((inst.gt_classes >= 0) & (inst.gt_classes < 12)).all()
        total += len(inst) - len(d["annotations"])
    assert total > 0  # objects were pasted
    cfg.MODEL.MASK_ON = False
    assert not CopyPasteDatasetMapper(cfg, dicts)(dicts[0])["instances"].has("gt_masks")
