# Copyright (c) lt_d2 contributors.
import hashlib
import json
import os

import numpy as np
import pytest

from lt_d2.data.synthetic import (
    COMPLETE_MARKER,
    class_image_targets,
    generate_synthetic_lt,
    shape_polygon,
)
from lt_d2.grouping import lvis_frequency

from .conftest import TINY


def _load(root, split):
    with open(os.path.join(root, "annotations", f"lt_synthetic_{split}.json")) as f:
        return json.load(f)


def _digest(folder):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            h.update(name.encode())
            with open(os.path.join(dirpath, name), "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a = generate_synthetic_lt(str(tmp_path / "a"), seed=5, **TINY)
    b = generate_synthetic_lt(str(tmp_path / "b"), seed=5, **TINY)
    c = generate_synthetic_lt(str(tmp_path / "c"), seed=6, **TINY)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_default_targets_form_a_steep_long_tail():
    counts = class_image_targets(48, 400, 2)
    groups = lvis_frequency(counts).tolist()
    assert counts[0] == 400 and counts[-1] == 2 and np.all(np.diff(counts) <= 0)
    assert (groups.count("r"), groups.count("c"), groups.count("f")) == (15, 20, 13)


def test_categories_carry_training_statistics_and_lvis_groups(tiny_root):
    root = tiny_root / "lt_synthetic"
    assert (root / COMPLETE_MARKER).exists()
    train, val = _load(root, "train"), _load(root, "val")
    assert train["categories"] == val["categories"]
    images_of = {c["id"]: set() for c in train["categories"]}
    instances = {c["id"]: 0 for c in train["categories"]}
    for ann in train["annotations"]:
        images_of[ann["category_id"]].add(ann["image_id"])
        instances[ann["category_id"]] += 1
    for cat in train["categories"]:
        assert cat["instance_count"] == instances[cat["id"]]
        # an unlabelled (not exhaustive) instance can remove a class's only label in an image
        assert cat["image_count"] >= len(images_of[cat["id"]])
        assert cat["frequency"] == str(lvis_frequency(cat["image_count"]))
    assert {c["frequency"] for c in train["categories"]} == {"r", "c", "f"}
    # every class is present in val
    assert {a["category_id"] for a in val["annotations"]} == set(images_of)


def test_federated_labels_and_geometry(tiny_root):
    root = tiny_root / "lt_synthetic"
    data = _load(root, "train")
    size = TINY["image_size"]
    by_image = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], set()).add(ann["category_id"])
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and w > 0 and h > 0
        assert x + w <= size + 1e-6 and y + h <= size + 1e-6
        poly = np.array(ann["segmentation"][0]).reshape(-1, 2)
        assert poly.min(0)[0] >= x - 1e-6 - 0.01 or x == 0
        assert 0 < ann["area"] <= w * h + 1e-3
    for img in data["images"]:
        present = by_image.get(img["id"], set()) | set(img["not_exhaustive_category_ids"])
        assert not present & set(img["neg_category_ids"])
        assert len(present) + len(img["neg_category_ids"]) == TINY["num_classes"]
        assert os.path.exists(root / img["file_name"])
        assert img["coco_url"].split("/")[-2:] == img["file_name"].split("/")


def test_refuses_to_overwrite_and_leaves_no_partial_folder(tmp_path):
    target = tmp_path / "lt_synthetic"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        generate_synthetic_lt(str(target), **TINY)
    assert (target / "keep.txt").read_text() == "user data"
    with pytest.raises(ValueError, match="at most 48"):
        generate_synthetic_lt(str(tmp_path / "x"), num_classes=60)
    assert sorted(os.listdir(tmp_path)) == ["lt_synthetic"]


def test_shape_polygons_fit_their_size():
    for shape in ("circle", "square", "triangle", "diamond", "star", "cross", "hexagon", "arrow"):
        poly = shape_polygon(shape, 50, 50, 20, 0.0)
        extent = poly.max(0) - poly.min(0)
        assert 8 <= extent.max() <= 20 + 1e-6, shape
    with pytest.raises(ValueError, match="Unknown shape"):
        shape_polygon("blob", 0, 0, 1, 0)
