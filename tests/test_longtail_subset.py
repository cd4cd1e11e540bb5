# Copyright (c) lt_d2 contributors.
"""COCO-MLT / VOC-MLT subset creation: targets, class order, greedy sampler, readers, CLI."""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from lt_d2.data.longtail_subset import (
    class_statistics,
    cooccurrence_order,
    create_longtail_dataset,
    pareto_targets,
    sample_longtail_subset,
)
from lt_d2.data.multilabel_annotations import (
    VOC_CLASSES,
    LongTailFormatError,
    read_multilabel_annotations,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOC_MLT_TARGETS = [800, 529, 359, 248, 175, 125, 91, 67, 50, 38, 29, 23, 18, 14, 11, 9, 7, 6, 5, 4]


def test_pareto_targets_match_published_voc_and_coco_shape():
    assert pareto_targets(20, 800) == VOC_MLT_TARGETS
    coco = pareto_targets(80, 1200)
    assert len(coco) == 80 and coco[0] == 1200 and min(coco) >= 1
    assert all(a >= b for a, b in zip(coco, coco[1:]))
    assert pareto_targets(1, 50) == [50]
    with pytest.raises(ValueError):
        pareto_targets(5, 10, min_count=20)


def test_class_statistics_is_json_ready():
    labels = np.array([[1, 0, 1], [1, 1, 0], [1, 0, 0]])
    stats = class_statistics(labels, ["a", "b", "c"])
    assert json.loads(json.dumps(stats)) == stats
    assert stats["class_freq"] == [3, 1, 1] and stats["neg_class_freq"] == [0, 2, 2]
    assert stats["num_images"] == 3 and stats["split"]["tail"] == [0, 1, 2]
    assert stats["thresholds"] == {"head": 100, "tail": 20}


def test_cooccurrence_order():
    # class 0 appears in every image of classes 1 and 2: sum_i P(0|i) = 1 + 1 + 1 = 3;
    # P(1|.) = 1/4 + 1 + 0, P(2|.) = 1/4 + 0 + 1: a tie, the lower index first; class 3 is empty
    labels = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0]])
    assert cooccurrence_order(labels).tolist() == [0, 1, 2, 3]
    # with class 1 also inside every class-2 image, class 1 moves ahead of class 2
    labels = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    assert cooccurrence_order(labels).tolist() == [0, 1, 2]


def one_label_pool(counts):
    """An image pool where every image has exactly one label; ``counts[c]`` images of class c."""
    rows = [np.eye(len(counts), dtype=np.uint8)[c] for c, n in enumerate(counts) for _ in range(n)]
    return np.stack(rows)


def test_greedy_reaches_targets_without_cooccurrence():
    labels = one_label_pool([60, 40, 30, 10])
    targets, order = [30, 12, 5, 2], [0, 1, 2, 3]
    selected = sample_longtail_subset(labels, targets, order, seed=0)
    assert labels[selected].sum(axis=0).tolist() == targets
    assert selected.tolist() == sorted(set(selected.tolist()))
    # a target above what the pool holds takes every image of the class
    selected = sample_longtail_subset(labels, [30, 12, 5, 50], order, seed=0)
    assert labels[selected].sum(axis=0).tolist() == [30, 12, 5, 10]


def test_greedy_removes_when_cooccurrence_overshoots():
    # every class-1 image also holds class 0, so class 0 (visited second) is over its target
    # and must shed images; class 1 (visited first) then loses some as a side effect
    labels = np.zeros((30, 2), dtype=np.uint8)
    labels[:20, 0] = 1
    labels[10:30, 1] = 1
    selected = sample_longtail_subset(labels, [15, 3], [1, 0], seed=0)
    counts = labels[selected].sum(axis=0)
    assert counts[0] == 3 and counts[1] < 15


def test_greedy_deterministic_per_seed():
    rng = np.random.default_rng(0)
    labels = (rng.random((400, 6)) < [0.5, 0.3, 0.2, 0.1, 0.05, 0.02]).astype(np.uint8)
    order = cooccurrence_order(labels)
    targets = pareto_targets(6, 80)
    a = sample_longtail_subset(labels, targets, order, seed=0)
    assert np.array_equal(a, sample_longtail_subset(labels, targets, order, seed=0))
    assert not np.array_equal(a, sample_longtail_subset(labels, targets, order, seed=1))


def write_coco(path, images=4):
    data = {
        "images": [{"id": 10 + i, "file_name": f"{i}.jpg", "width": 64, "height": 64}
                   for i in range(images)],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [0, 0, 5, 5], "area": 25},
            {"id": 2, "image_id": 10, "category_id": 7, "bbox": [0, 0, 5, 5], "area": 25},
            {"id": 3, "image_id": 11, "category_id": 7, "bbox": [0, 0, 5, 5], "area": 25,
             "iscrowd": 1},
            {"id": 4, "image_id": 12, "category_id": 3, "bbox": [0, 0, 5, 5], "area": 25,
             "ignore": 1},
            {"id": 5, "image_id": 12, "category_id": 7, "bbox": [0, 0, 0.5, 5], "area": 2.5},
        ],
    }
    path.write_text(json.dumps(data))
    return path


def test_read_coco(tmp_path):
    image_ids, names, labels = read_multilabel_annotations(str(write_coco(tmp_path / "c.json")))
    assert image_ids == [10, 11, 12, 13]
    assert names == ["cat", "dog"]  # category id order
    # crowd counts; "ignore" and sub-pixel boxes do not; unannotated images stay as zero rows
    assert labels.tolist() == [[1, 1], [0, 1], [0, 0], [0, 0]]
    assert labels.dtype == np.uint8
    ann = read_multilabel_annotations(str(tmp_path / "c.json"))
    assert ann.image_ids == image_ids and ann.labels is ann[2] and ann.class_names == names
    assert ann.file_names[1] == "1.jpg" and ann.heights == [64] * 4 and ann.widths == [64] * 4


def write_voc(root, objects_per_image):
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, objects in objects_per_image.items():
        xml = "".join(f"<object><name>{name}</name><difficult>{int(difficult)}</difficult>"
                      "</object>" for name, difficult in objects)
        size = "<size><width>40</width><height>30</height><depth>3</depth></size>"
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation>{size}{xml}</annotation>")
    ids = "\n".join(objects_per_image) + "\n"
    (root / "ImageSets" / "Main" / "trainval.txt").write_text(ids)
    (root / "ImageSets" / "Main" / "val.txt").write_text(list(objects_per_image)[0] + "\n")
    return root


def test_read_voc_folder_and_split_file(tmp_path):
    root = write_voc(tmp_path / "VOCdevkit" / "VOC2012", {
        "2008_000001": [("dog", False), ("person", True)],  # difficult objects count
        "2008_000002": [("tvmonitor", False), ("tvmonitor", False)],
        "2008_000003": [],
    })
    image_ids, names, labels = read_multilabel_annotations(str(root))
    assert names == list(VOC_CLASSES) and names[0] == "aeroplane" and names[-1] == "tvmonitor"
    assert image_ids == ["2008_000001", "2008_000002", "2008_000003"]
    assert np.nonzero(labels[0])[0].tolist() == [VOC_CLASSES.index("dog"),
                                                 VOC_CLASSES.index("person")]
    assert np.nonzero(labels[1])[0].tolist() == [19] and labels[2].sum() == 0
    ann = read_multilabel_annotations(str(root))
    assert ann.file_names[0] == "JPEGImages/2008_000001.jpg"
    assert ann.heights == [30] * 3 and ann.widths == [40] * 3
    image_ids, _, labels = read_multilabel_annotations(str(root / "ImageSets/Main/val.txt"))
    assert image_ids == ["2008_000001"] and labels.shape == (1, 20)


def test_read_voc_unknown_class(tmp_path):
    root = write_voc(tmp_path / "VOC2012", {"a": [("unicorn", False)]})
    with pytest.raises(LongTailFormatError, match="unicorn"):
        read_multilabel_annotations(str(root))


def test_unknown_format_errors(tmp_path):
    other = tmp_path / "lvis.json"
    other.write_text(json.dumps({"images": []}))
    with pytest.raises(LongTailFormatError) as e:
        read_multilabel_annotations(str(other))
    message = str(e.value)
    assert str(other) in message and "'categories'" in message and "VOCdevkit/VOC2012" in message
    garbage = tmp_path / "ann.bin"
    garbage.write_bytes(b"\x00\xff not json")
    with pytest.raises(LongTailFormatError, match="not a json"):
        read_multilabel_annotations(str(garbage))
    with pytest.raises(LongTailFormatError, match="Annotations"):
        read_multilabel_annotations(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        read_multilabel_annotations(str(tmp_path / "missing.json"))


def test_zero_image_class_warns_and_writes(tmp_path, caplog):
    ann = write_coco(tmp_path / "c.json")  # class "cat" only in an image that also has "dog"
    with caplog.at_level(logging.WARNING, logger="lt_d2.data.longtail_subset"):
        # max 1, min 0: "dog" (first) wants 1 image, "cat" wants 0 and so may lose its image
        stats = create_longtail_dataset(str(ann), str(tmp_path / "out"), "coco", max_count=1,
                                        min_count=0, seed=0)
    assert stats["targets"] == [1, 0] and stats["class_order"] == [1, 0]
    assert stats["class_freq"][0] == 0
    assert "cat" in caplog.text and "no image" in caplog.text


def run_cli(*args):
    tool = os.path.join(REPO, "tools", "create_longtail_dataset.py")
    return subprocess.run([sys.executable, tool, *args], capture_output=True, text=True,
                          timeout=60)


def test_cli_end_to_end(tmp_path):
    ann = write_coco(tmp_path / "instances_train.json")
    before = ann.read_bytes()
    out = tmp_path / "coco_mlt"
    args = ["--dataset", "coco", "--ann", str(ann), "--out", str(out), "--max-count", "2"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "selected 2 of 4 images" in result.stdout and "head/medium/tail" in result.stdout
    image_ids = json.loads((out / "img_id.json").read_text())
    stats = json.loads((out / "class_stats.json").read_text())
    assert image_ids == [10, 11]
    assert stats["class_freq"] == [1, 2] and stats["seed"] == 0 and stats["max_count"] == 2
    assert stats["source"] == str(ann) and stats["class_names"] == ["cat", "dog"]
    assert sorted(os.listdir(out)) == ["class_stats.json", "img_id.json"]  # no temp files left

    outputs = {p: (out / p).read_bytes() for p in os.listdir(out)}
    again = run_cli(*args, "--seed", "5")
    assert again.returncode != 0
    assert "create_longtail_dataset.py: error:" in again.stderr and "--overwrite" in again.stderr
    assert {p: (out / p).read_bytes() for p in os.listdir(out)} == outputs
    assert run_cli(*args, "--seed", "5", "--overwrite").returncode == 0
    assert json.loads((out / "class_stats.json").read_text())["seed"] == 5
    assert ann.read_bytes() == before

    bad = run_cli("--dataset", "voc", "--ann", str(tmp_path / "nowhere"), "--out",
                  str(tmp_path / "voc_mlt"))
    assert bad.returncode != 0 and "no such file" in bad.stderr
