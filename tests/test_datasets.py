# Copyright (c) lt_d2 contributors.
import json
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis import load_lvis_json

from lt_d2.data import get_class_stats, load_lt_json, register_lt_dataset
from lt_d2.data.catalog import DatasetFormatError, check_dataset_files


def _paths(root, split):
    base = os.path.join(str(root), "lt_synthetic")
    return os.path.join(base, "annotations", f"lt_synthetic_{split}.json"), base + "/"


def _fresh_name(name):
    for catalog in (DatasetCatalog, MetadataCatalog):
        if name in catalog.list():
            catalog.remove(name)
    return name


def test_same_dicts_as_detectron2_lvis_loader(tiny_root):
    json_file, image_root = _paths(tiny_root, "train")
    ours = load_lt_json(json_file, image_root)
    theirs = load_lvis_json(json_file, image_root)
    assert ours == theirs


def test_metadata_and_class_stats_come_from_the_json(tiny_root):
    json_file, image_root = _paths(tiny_root, "train")
    name = _fresh_name("tiny_stats_train")
    register_lt_dataset(name, json_file, image_root)
    stats = get_class_stats(name)  # computed from the json: nothing loaded yet
    meta = MetadataCatalog.get(name)
    with open(json_file) as f:
        cats = sorted(json.load(f)["categories"], key=lambda c: c["id"])
    assert meta.evaluator_type == "lvis"
    assert meta.thing_classes == [c["name"] for c in cats]
    assert list(stats.instance_count) == [c["instance_count"] for c in cats]
    assert list(stats.frequency) == [c["frequency"] for c in cats]
    assert list(stats.image_count) == [c["image_count"] for c in cats]
    assert meta.class_image_count[0] == {"id": 1, "image_count": int(stats.image_count[0])}
    assert set(stats.group("r")) | set(stats.group("c")) | set(stats.group("f")) == set(range(12))
    # loading the dataset later leaves the same statistics in place
    DatasetCatalog.get(name)
    assert list(get_class_stats(name).image_count) == list(stats.image_count)
    doubled = get_class_stats([name, name])
    assert list(doubled.image_count) == list(2 * stats.image_count)


def test_coco_format_is_detected(tmp_path):
    data = {"images": [{"id": 7, "file_name": "a.jpg", "height": 10, "width": 10}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 5, "bbox": [1, 1, 3, 3],
                             "iscrowd": 0, "area": 9}],
            "categories": [{"id": 5, "name": "five"}, {"id": 9, "name": "nine"}]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(data))
    name = _fresh_name("tiny_coco_format")
    register_lt_dataset(name, str(path), str(tmp_path))
    (record,) = DatasetCatalog.get(name)
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "coco"
    assert meta.thing_dataset_id_to_contiguous_id == {5: 0, 9: 1}
    assert record["file_name"] == str(tmp_path / "a.jpg")
    assert record["annotations"][0]["category_id"] == 0
    assert list(get_class_stats(name).frequency) == ["r", "r"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("categories"), "missing the 'categories' list"),
        (lambda d: d["annotations"][0].update(category_id=999), "category_id that is not in"),
        (lambda d: d["annotations"][0].update(image_id=-5), "image_id that is not in"),
        (lambda d: d.update(categories=[]), "'categories' is empty"),
    ],
)
def test_malformed_json_is_refused_with_the_reason(tiny_root, tmp_path, mutate, message):
    json_file, image_root = _paths(tiny_root, "val")
    with open(json_file) as f:
        data = json.load(f)
    mutate(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError, match=message):
        load_lt_json(str(bad), image_root)


def test_missing_files_name_the_dataset_root_and_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"DETECTRON2_DATASETS.*lvis/lvis_v1_\{train,val\}"):
        check_dataset_files("lvis_v1_train")  # built-in, re-registered by lt_d2
    with pytest.raises(FileNotFoundError, match="prepare_synthetic_lt.py"):
        load_lt_json(str(tmp_path / "nope.json"), str(tmp_path), "lt_synthetic_train")


def test_builtin_lvis_splits_use_lt_loader():
    meta = MetadataCatalog.get("lvis_v1_train")
    assert len(meta.thing_classes) == 1203
    assert meta.json_file.endswith("lvis/lvis_v1_train.json")
    assert "lt_synthetic_train" in DatasetCatalog.list()


def test_loaders_are_pure_and_statistics_never_load_the_dataset(tiny_root, tmp_path, monkeypatch):
    json_file, image_root = _paths(tiny_root, "train")
    name = _fresh_name("tiny_pure_loader")
    register_lt_dataset(name, json_file, image_root)
    registered = MetadataCatalog.get(name).as_dict()
    load_lt_json(json_file, image_root, name)
    assert MetadataCatalog.get(name).as_dict() == registered  # only the registered loader writes
    monkeypatch.setattr(DatasetCatalog, "get", lambda n: pytest.fail(f"loaded {n}"))
    assert get_class_stats(name).num_classes == 12
    missing = _fresh_name("tiny_missing_json")
    register_lt_dataset(missing, str(tmp_path / "absent.json"), image_root,
                        layout_hint="Make it with make_it.py.")
    with pytest.raises(FileNotFoundError,
                       match=r"Dataset 'tiny_missing_json': json_file .*absent\.json.*make_it\.py"):
        get_class_stats(missing)
