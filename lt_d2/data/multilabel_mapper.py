# Copyright (c) lt_d2 contributors.
"""Dataset mapper for multi-label classification: a fixed-size image and a multi-hot vector.

The training augmentations follow the DB-loss recipe with detectron2 transforms: a random crop
of [CROP_MIN_SIZE, 1] of each side, a resize to IMAGE_SIZE x IMAGE_SIZE (aspect ratio not
kept), a horizontal flip, and brightness / contrast / saturation jitter. Its hue jitter has no
detectron2 transform and is left out.
"""
import copy

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetFromList, MapDataset
from detectron2.data import detection_utils as utils
from detectron2.data import get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.data.samplers import InferenceSampler

__all__ = ["MultiLabelDatasetMapper", "build_multilabel_test_loader", "multi_hot"]


def multi_hot(annotations, num_classes):
    """(K,) float 0/1 vector of the classes in ``annotations`` (dicts with "category_id")."""
    labels = torch.zeros(num_classes)
    ids = [a["category_id"] for a in annotations]
    if ids:
        if max(ids) >= num_classes or min(ids) < 0:
            raise ValueError(f"Label {max(ids)} out of range for {num_classes} classes; the "
                             "dataset and MODEL.LT.MULTILABEL.NUM_CLASSES disagree.")
        labels[ids] = 1.0
    return labels


class MultiLabelDatasetMapper:
    """Maps a dataset dict to ``{"image": (C, S, S) uint8-valued float tensor, "labels": (K,),
    ...the dict's other fields}``."""

    @configurable
    def __init__(self, is_train, *, augmentations, image_format, num_classes):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg, is_train=True):
        c = cfg.INPUT.LT.MULTILABEL
        size = c.IMAGE_SIZE
        augs = []
        if is_train:
            if not 0 < c.CROP_MIN_SIZE <= 1:
                raise ValueError(f"INPUT.LT.MULTILABEL.CROP_MIN_SIZE={c.CROP_MIN_SIZE}: use a "
                                 "fraction in (0, 1].")
            if c.CROP_MIN_SIZE < 1:
                augs.append(T.RandomCrop("relative_range", (c.CROP_MIN_SIZE, c.CROP_MIN_SIZE)))
        augs.append(T.Resize((size, size)))
        if is_train:
            augs.append(T.RandomFlip(0.5, horizontal=True))
            if c.PHOTOMETRIC:
                augs += [T.RandomApply(a, 0.5) for a in (
                    T.RandomBrightness(0.5, 1.5), T.RandomContrast(0.5, 1.5),
                    T.RandomSaturation(0.5, 1.5))]
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": cfg.MODEL.LT.MULTILABEL.NUM_CLASSES,
        }

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        image = np.clip(aug_input.image, 0, 255)
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)),
                                                dtype=torch.float32)
        dataset_dict["labels"] = multi_hot(dataset_dict.pop("annotations", []), self.num_classes)
        return dataset_dict


def _as_list(batch):
    return batch


def build_multilabel_test_loader(cfg, dataset_name):
    """Test loader of a multi-label dataset: each process gets its share of the images in
    batches of ``DATALOADER.LT.MULTILABEL_TEST_BATCH`` (detectron2's test loader takes one
    image at a time, which leaves a classifier's inference mostly idle)."""
    dicts = get_detection_dataset_dicts([dataset_name], filter_empty=False)
    dataset = MapDataset(DatasetFromList(dicts, copy=False),
                         MultiLabelDatasetMapper(cfg, is_train=False))
    batch_sampler = torch.utils.data.BatchSampler(
        InferenceSampler(len(dataset)), cfg.DATALOADER.LT.MULTILABEL_TEST_BATCH, drop_last=False)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler,
                                       num_workers=cfg.DATALOADER.NUM_WORKERS,
                                       collate_fn=_as_list)
