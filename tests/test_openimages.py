# Copyright (c) lt_d2 contributors.
"""Open Images Challenge support: CSV -> json conversion, its CLI, and the challenge evaluator."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.structures import Boxes, Instances

from lt_d2.data import load_lt_json
from lt_d2.data.openimages import register_openimages
from lt_d2.data.openimages_convert import convert_openimages, write_dataset_json
from lt_d2.data.openimages_csv import OpenImagesFormatError, image_size_from_file, read_hierarchy
from lt_d2.evaluation.openimages import (
    OpenImagesEvaluator,
    evaluate_openimages,
    interpolated_average_precision,
    load_openimages_groundtruth,
    openimages_summary,
    tp_fp_single_class,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOX_HEADER = ["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax",
              "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside"]
# label, display name, parent (None: under the root), training boxes
CLASSES = [("/m/animal", "Animal", None, 1), ("/m/dog", "Dog", "/m/animal", 9),
           ("/m/cat", "Cat", "/m/animal", 5), ("/m/vehicle", "Vehicle", None, 2),
           ("/m/car", "Car", "/m/vehicle", 7), ("/m/wheel", "Wheel", None, 12),
           ("/m/bench1", "Bench", None, 3), ("/m/bench2", "Bench", None, 0)]
# sorted by box count: bench2 0, animal 1 | vehicle 2, bench1 3 | cat 5, car 7 | dog 9 | wheel 12
EXPECTED_QUINTILE = {"/m/bench2": 1, "/m/animal": 1, "/m/vehicle": 2, "/m/bench1": 2,
                     "/m/cat": 3, "/m/car": 3, "/m/dog": 4, "/m/wheel": 5}
NUM_IMAGES = 20


def image_size(i):
    return (640, 480) if i % 2 == 0 else (800, 600)


def make_boxes():
    """(ImageID, label, xmin, xmax, ymin, ymax, group_of); boxes of one image never overlap."""
    rows, slots = [], [0] * NUM_IMAGES
    for c, (label, _, _, count) in enumerate(CLASSES):
        for j in range(count):
            i = (3 * c + j) % NUM_IMAGES
            s = slots[i]
            slots[i] += 1
            x0, y0 = (s % 4) * 0.25 + 0.02, (s // 4) * 0.25 + 0.02
            group_of = label == "/m/wheel" and j < 2 or label == "/m/car" and j == 0
            rows.append((f"img{i:02d}", label, x0, x0 + 0.2, y0, y0 + 0.2, int(group_of)))
    return rows


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture
def oid(tmp_path):
    """A tiny challenge release: file paths by role."""
    boxes = make_boxes()
    box_rows = [[i, "xclick", l, 1, x0, x1, y0, y1, 0, 0, g, 0, 0]
                for i, l, x0, x1, y0, y1, g in boxes]
    positives = sorted({(b[0], b[1]) for b in boxes})
    label_rows = [[i, "verification", l, 1] for i, l in positives]
    label_rows += [["img01", "verification", "/m/cat", 0],  # img01 has a dog, no cat
                   ["img02", "verification", "/m/animal", 0],  # -> dog, cat absent too
                   ["img20", "verification", "/m/car", 0],  # an image with no boxes at all
                   ["img20", "verification", "/m/dog", 1],  # present but unboxed -> animal too
                   ["img03", "verification", "/m/not_a_box_class", 1]]
    hierarchy = {"LabelName": "/m/0bl9f", "Subcategory": [
        {"LabelName": "/m/animal", "Subcategory": [{"LabelName": "/m/dog"},
                                                   {"LabelName": "/m/cat"}]},
        {"LabelName": "/m/vehicle", "Subcategory": [{"LabelName": "/m/car"}]},
        {"LabelName": "/m/wheel"}, {"LabelName": "/m/bench1"}, {"LabelName": "/m/bench2"}]}
    (tmp_path / "hierarchy.json").write_text(json.dumps(hierarchy))
    sizes = [[f"img{i:02d}", *image_size(i)] for i in range(NUM_IMAGES + 1)]
    return {
        "classes": write_csv(tmp_path / "classes.csv", None, [c[:2] for c in CLASSES]),
        "boxes": write_csv(tmp_path / "boxes.csv", BOX_HEADER, box_rows),
        "labels": write_csv(tmp_path / "labels.csv", ["ImageID", "Source", "LabelName",
                                                      "Confidence"], label_rows),
        "hierarchy": str(tmp_path / "hierarchy.json"),
        "sizes": write_csv(tmp_path / "sizes.csv", ["ImageID", "Width", "Height"], sizes),
        "dir": tmp_path,
    }


def convert(oid, **kwargs):
    return convert_openimages(oid["classes"], oid["boxes"], image_labels_csv=oid["labels"],
                              hierarchy_json=oid["hierarchy"], image_sizes_csv=oid["sizes"],
                              **kwargs)


def test_conversion_contents(oid):
    data = convert(oid)
    boxes = make_boxes()
    images = {img["file_name"]: img for img in data["images"]}
    assert [img["id"] for img in data["images"]] == list(range(1, NUM_IMAGES + 2))
    assert sorted(images) == [f"img{i:02d}.jpg" for i in range(NUM_IMAGES + 1)]
    assert (images["img01.jpg"]["width"], images["img01.jpg"]["height"]) == (800, 600)
    cats = {c["label"]: c for c in data["categories"]}
    cid = {label: c["id"] for label, c in cats.items()}
    assert [c["name"] for c in data["categories"]] == [c[1] for c in CLASSES]
    assert cats["/m/dog"]["ancestor_ids"] == [cid["/m/animal"]]
    assert cats["/m/wheel"]["ancestor_ids"] == []

    assert len(data["annotations"]) == len(boxes)
    ann = data["annotations"][0]  # the animal box: img00, slot 0 -> (0.02, 0.02) .. (0.22, 0.22)
    assert ann["image_id"] == images["img00.jpg"]["id"]
    assert ann["category_id"] == cid["/m/animal"]
    assert ann["bbox"] == pytest.approx([12.8, 9.6, 128.0, 96.0])
    assert ann["area"] == pytest.approx(128.0 * 96.0, abs=0.01)
    group_of = [(a["category_id"], a["iscrowd"]) for a in data["annotations"] if a["iscrowd"]]
    assert sorted(group_of) == sorted([(cid["/m/car"], 1)] + [(cid["/m/wheel"], 1)] * 2)

    # image-level labels: present -> ancestors, absent -> descendants; unknown labels skipped
    assert set(images["img01.jpg"]["neg_category_ids"]) == {cid["/m/cat"]}
    assert set(images["img02.jpg"]["neg_category_ids"]) == {cid[x] for x in
                                                            ("/m/animal", "/m/dog", "/m/cat")}
    assert set(images["img20.jpg"]["pos_category_ids"]) == {cid["/m/dog"], cid["/m/animal"]}
    assert cid["/m/animal"] in images["img03.jpg"]["pos_category_ids"]  # img03 has a dog box

    for label, name, _, count in CLASSES:
        assert cats[label]["instance_count"] == count
        image_count = len({b[0] for b in boxes if b[1] == label})
        assert cats[label]["image_count"] == image_count
        assert cats[label]["frequency"] == ("r" if image_count <= 10 else "c")  # LVIS's rule
        assert cats[label]["frequency_quintile"] == EXPECTED_QUINTILE[label], label
    assert data["info"]["boxes_hierarchy_expanded"] is False


def test_registered_json_loads_with_lt_loader(oid, tmp_path):
    path = str(tmp_path / "oid.json")
    write_dataset_json(convert(oid), path)
    register_openimages("oid_test_load", path, str(tmp_path))
    dicts = DatasetCatalog.get("oid_test_load")
    meta = MetadataCatalog.get("oid_test_load")
    assert meta.evaluator_type == "openimages"
    assert meta.thing_classes == [c[1] for c in CLASSES]
    assert len(dicts) == NUM_IMAGES + 1 and dicts[0]["file_name"].endswith("img00.jpg")
    assert sum(len(d["annotations"]) for d in dicts) == len(make_boxes())
    assert [c["instance_count"] for c in meta.class_instance_count] == [c[3] for c in CLASSES]
    assert load_lt_json(path, str(tmp_path))[2]["neg_category_ids"] == [1, 2, 3]


def test_expand_hierarchy_and_stats_from(oid, tmp_path):
    train = str(tmp_path / "train.json")
    write_dataset_json(convert(oid), train)
    data = convert(oid, expand_hierarchy=True, stats_from=train)
    parents = sum(c[3] for c in CLASSES if c[2] is not None)  # one copy per box with a parent
    assert len(data["annotations"]) == len(make_boxes()) + parents
    assert data["info"]["boxes_hierarchy_expanded"] is True
    dog = next(a for a in data["annotations"] if a["category_id"] == 2)
    copy = data["annotations"][data["annotations"].index(dog) + 1]
    assert copy["category_id"] == 1 and copy["bbox"] == dog["bbox"]
    # counts stay those of the unexpanded training boxes
    assert [c["instance_count"] for c in data["categories"]] == [c[3] for c in CLASSES]
    with pytest.raises(ValueError, match="hierarchy json"):
        convert_openimages(oid["classes"], oid["boxes"], image_sizes_csv=oid["sizes"],
                           expand_hierarchy=True)


def test_hierarchy_label_under_two_parents(tmp_path):
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"LabelName": "/m/root", "Subcategory": [
        {"LabelName": "/m/toy", "Subcategory": [{"LabelName": "/m/ball"}]},
        {"LabelName": "/m/sports", "Subcategory": [{"LabelName": "/m/gear", "Subcategory": [
            {"LabelName": "/m/ball"}]}]}]}))
    ancestors = read_hierarchy(str(path), ["/m/ball", "/m/toy", "/m/gear", "/m/sports"])
    assert ancestors["/m/ball"] == {"/m/toy", "/m/gear", "/m/sports"}  # root: not a class
    assert ancestors["/m/gear"] == {"/m/sports"} and ancestors["/m/toy"] == set()


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "convert_openimages.py"),
                           *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_cli_end_to_end(oid, tmp_path):
    out = str(tmp_path / "out" / "train.json")
    args = ["--classes", oid["classes"], "--boxes", oid["boxes"], "--image-labels",
            oid["labels"], "--hierarchy", oid["hierarchy"], "--image-sizes", oid["sizes"],
            "--out", out]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "21 images" in proc.stdout
    with open(out) as f:
        assert json.load(f) == json.loads(json.dumps(convert(oid)))
    before = os.path.getmtime(out)
    proc = run_cli(*args)
    assert proc.returncode != 0 and "--overwrite" in proc.stderr
    assert os.path.getmtime(out) == before
    assert run_cli(*args, "--overwrite").returncode == 0
    proc = run_cli(*args[:-1], oid["boxes"], "--overwrite")  # the output is an input
    assert proc.returncode != 0 and "one of the inputs" in proc.stderr
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith(".tmp_")]


def test_bad_inputs(oid, tmp_path):
    with open(oid["boxes"], newline="") as f:
        good = list(csv.reader(f))
    cases = [
        ([h for h in good[0] if h != "IsGroupOf"], None, "missing column.*IsGroupOf"),
        (good[0], [4, 2, "/m/unknown"], r"boxes_bad.csv:4: label /m/unknown"),
        (good[0], [3, 5, "1.2"], r"boxes_bad.csv:3: .*normalised box"),
        (good[0], [2, 5, "0.01"], r"boxes_bad.csv:2: .*XMax=0.01"),
    ]
    for header, edit, message in cases:
        rows = [list(r) for r in good[1:]]
        if header is not good[0]:
            rows = [[v for h, v in zip(good[0], r) if h in header] for r in rows]
        if edit:
            rows[edit[0] - 2][edit[1]] = edit[2]
        bad = write_csv(tmp_path / "boxes_bad.csv", header, rows)
        with pytest.raises(OpenImagesFormatError, match=message):
            convert_openimages(oid["classes"], bad, image_sizes_csv=oid["sizes"])
    with pytest.raises(ValueError, match="Image sizes are needed"):
        convert_openimages(oid["classes"], oid["boxes"])
    few = write_csv(tmp_path / "few.csv", ["ImageID", "Width", "Height"], [["img00", 5, 5]])
    with pytest.raises(OpenImagesFormatError, match="few.csv: no size for 19 image"):
        convert_openimages(oid["classes"], oid["boxes"], image_sizes_csv=few)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_dataset_json({}, oid["sizes"])


def test_image_sizes_from_files(tmp_path):
    from PIL import Image

    Image.new("RGB", (30, 20)).save(tmp_path / "a.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees, as detectron2 will load it
    Image.new("RGB", (30, 20)).save(tmp_path / "b.jpg", exif=exif)
    assert image_size_from_file(str(tmp_path), "a") == (30, 20)
    assert image_size_from_file(str(tmp_path), "b") == (20, 30)
    write_csv(tmp_path / "c.csv", None, [["/m/x", "X"]])
    write_csv(tmp_path / "b.csv", ["ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax",
                                   "IsGroupOf"],  # the minimal columns
              [["a", "/m/x", 0, 0.5, 0, 1, 0], ["b", "/m/x", 0, 1, 0, 0.5, 0]])
    data = convert_openimages(str(tmp_path / "c.csv"), str(tmp_path / "b.csv"),
                              image_root=str(tmp_path))
    assert [a["bbox"] for a in data["annotations"]] == [[0, 0, 15, 20], [0, 0, 20, 15]]


# ------------------------------------------------------------------------------ evaluation


def test_tp_fp_group_of_and_duplicates():
    gt = np.array([[0, 0, 100, 100], [200, 200, 250, 250]], float)
    group_of = np.array([True, False])
    dets = np.array([[10, 10, 40, 40], [50, 50, 90, 90], [0, 0, 100, 100],  # inside the group
                     [200, 200, 250, 250], [201, 201, 250, 250],  # the box, then a duplicate
                     [400, 400, 450, 450]], float)  # nowhere
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.95])
    s, tp = tp_fp_single_class(dets, scores, gt, group_of)
    assert sorted(zip(s.tolist(), tp.tolist())) == [(0.5, False), (0.6, True), (0.9, True),
                                                    (0.95, False)]
    # 0.95 F, 0.9 T, 0.6 T, 0.5 F over 2 boxes: precision envelope 2/3 on both recall steps
    assert interpolated_average_precision(s, tp, 2) == pytest.approx(2 / 3)
    assert np.isnan(interpolated_average_precision([], [], 0))
    assert interpolated_average_precision([], [], 3) == 0.0


def _image(boxes, classes, group_of=None, verified=()):
    classes = np.array(classes, np.int64)
    return {"boxes": np.array(boxes, float).reshape(-1, 4), "classes": classes,
            "group_of": np.zeros(len(classes), bool) if group_of is None else np.array(group_of),
            "evaluatable": set(verified) | set(classes.tolist()), "oid_id": "x", "width": 100,
            "height": 100}


def test_unverified_classes_ignored_and_hierarchy():
    # classes: 0 animal (parent of 1 dog), 1 dog, 2 cat, 3 car
    box = [10, 10, 50, 50]
    gt = {1: _image([box, box, [60, 60, 90, 90]], [1, 0, 2], verified=[3]),  # dog expanded
          2: _image([], [], verified=[2])}  # cat verified absent, car not verified
    preds = {1: {"boxes": [box, [60, 60, 90, 90]], "scores": [0.8, 0.5], "classes": [1, 2]},
             2: {"boxes": [box, box], "scores": [0.9, 0.99], "classes": [2, 3]}}
    ap = evaluate_openimages(gt, preds, 4, ancestors=[[], [0], [], []])
    assert ap[1] == 1.0  # dog
    assert ap[0] == 0.0  # animal: in the ground truth by expansion, never detected as such
    assert ap[2] == pytest.approx(0.5)  # cat: the 0.9 false positive on image 2 counts first
    assert np.isnan(ap[3])  # car: no ground truth; its detection on image 2 is ignored
    ap = evaluate_openimages(gt, preds, 4, ancestors=[[], [0], [], []], expand_detections=True)
    assert ap[0] == 1.0


def test_summarize_groups():
    # 7 classes: groups of 2, 2, 1, 1, 1 in increasing count
    ap = np.array([1.0, 0.5, np.nan, 0.0, 0.25])
    res = openimages_summary(ap, [1, 1, 2, 3, 5])
    assert res["mAP"] == pytest.approx(43.75) and res["AP1"] == pytest.approx(75)
    assert np.isnan(res["AP2"]) and res["AP3"] == 0 and np.isnan(res["AP4"])
    assert res["AP5"] == pytest.approx(25)


class GroundTruthModel(torch.nn.Module):
    """Predicts given boxes: {image_id: (XYXY boxes, classes, height, width)}, in order, with
    decreasing scores."""

    def __init__(self, boxes_by_image):
        super().__init__()
        self.boxes_by_image = boxes_by_image

    def forward(self, batch):
        outputs = []
        for inp in batch:
            boxes, classes, height, width = self.boxes_by_image[inp["image_id"]]
            inst = Instances((height, width))
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.linspace(1.0, 0.5, len(classes))
            inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
            outputs.append({"instances": inst})
        return outputs


def test_evaluator_end_to_end(oid, tmp_path):
    path = str(tmp_path / "val.json")
    write_dataset_json(convert(oid), path)
    register_openimages("oid_test_eval", path, str(tmp_path))
    dicts = DatasetCatalog.get("oid_test_eval")
    gt_images, _, _ = load_openimages_groundtruth(path)
    expanded = {i: (g["boxes"], g["classes"], g["height"], g["width"])
                for i, g in gt_images.items()}
    raw = {d["image_id"]: ([[x, y, x + w, y + h] for x, y, w, h in
                            (a["bbox"] for a in d["annotations"])],
                           [a["category_id"] for a in d["annotations"]], d["height"], d["width"])
           for d in dicts}
    loader = [[{"image_id": d["image_id"]}] for d in dicts]
    out_dir = str(tmp_path / "eval")
    evaluator = OpenImagesEvaluator("oid_test_eval", output_dir=out_dir)
    res = inference_on_dataset(GroundTruthModel(expanded), loader, evaluator)["bbox"]
    assert res["mAP"] == pytest.approx(100)
    assert all(res[f"AP{g}"] == pytest.approx(100) for g in (2, 3, 4, 5))
    assert res["AP1"] == pytest.approx(100)  # bench2 has no boxes: left out, not 0
    assert np.isnan(res["AP-Bench (/m/bench2)"]) and res["AP-Dog"] == pytest.approx(100)

    with open(os.path.join(out_dir, "openimages_submission.csv")) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ImageId", "PredictionString"] and len(rows) == NUM_IMAGES + 2
    row = dict(rows[1:])
    assert row["img20"] == ""
    first = row["img00"].split()[:6]  # the animal box, normalised, highest score
    assert first[0] == "/m/animal" and float(first[1]) == pytest.approx(1.0)
    assert [float(v) for v in first[2:]] == pytest.approx([0.02, 0.02, 0.22, 0.22], abs=1e-5)

    # without the parent copies, parents score only where they have boxes of their own
    evaluator = OpenImagesEvaluator("oid_test_eval", distributed=False)
    res = inference_on_dataset(GroundTruthModel(raw), loader,
                               evaluator)["bbox"]
    assert res["AP-Dog"] == pytest.approx(100) and res["AP-Animal"] < 50
    evaluator = OpenImagesEvaluator("oid_test_eval", distributed=False, expand_detections=True)
    res = inference_on_dataset(GroundTruthModel(raw), loader,
                               evaluator)["bbox"]
    assert res["mAP"] == pytest.approx(100)

    # AP1..AP5 from given training counts: the rarest group is Animal and (by index) Dog. Animal
    # has 1 box of its own among 15 after expansion (9 dogs, 5 cats)
    evaluator = OpenImagesEvaluator("oid_test_eval", distributed=False,
                                    train_instance_count=[0, 9, 9, 9, 9, 9, 9, 9])
    res = inference_on_dataset(GroundTruthModel(raw), loader, evaluator)["bbox"]
    assert res["AP-Animal"] == pytest.approx(100 / 15)
    assert res["AP1"] == pytest.approx((100 / 15 + 100) / 2)
