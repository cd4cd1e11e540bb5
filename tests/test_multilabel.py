# Copyright (c) lt_d2 contributors.
"""Multi-label classification: data, model, evaluator, and train + evaluate end to end."""
import json
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from sklearn.metrics import average_precision_score

import lt_d2  # noqa: F401  before detectron2.data, also in the spawned evaluator processes
from lt_d2.config import add_lt_config
from lt_d2.data import ClassAwareSampler, get_class_stats
from lt_d2.data.multilabel_datasets import load_multilabel_dataset, register_multilabel_dataset
from lt_d2.data.multilabel_mapper import MultiLabelDatasetMapper
from lt_d2.data.synthetic import COMPLETE_MARKER
from lt_d2.data.synthetic_multilabel import generate_synthetic_multilabel
from lt_d2.engine import check_config
from lt_d2.engine.optimizer import with_full_model_clipping
from lt_d2.evaluation import MultiLabelEvaluator, multilabel_scores, stepwise_average_precision

from .conftest import REPO, copypaste_metrics, run_train_net

NUM_CLASSES = 8
SIZE = 48
TINY_ML = dict(num_classes=NUM_CLASSES, pool_images=1500, test_images=80, max_count=250,
               image_size=SIZE, min_size=10, max_size=18)


@pytest.fixture(scope="module")
def ml_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml_datasets")
    generate_synthetic_multilabel(str(root / "ml_synthetic"), seed=1, **TINY_ML)
    return root


def _register(name, root, split="pool", ids=True):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    base = os.path.join(root, "ml_synthetic")
    register_multilabel_dataset(
        name, os.path.join(base, "annotations", f"{split}.json"), base,
        os.path.join(base, "longtail", "img_id.json") if ids else None)
    return name


def _cfg(**overrides):
    cfg = add_lt_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, "configs", "Synthetic-MLT", "db_focal_tiny_PFC.yaml"))
    cfg.MODEL.LT.MULTILABEL.NUM_CLASSES = NUM_CLASSES
    cfg.INPUT.LT.MULTILABEL.IMAGE_SIZE = SIZE
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return cfg


# --- evaluator -----------------------------------------------------------------------------


def test_average_precision_equals_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 60))
        targets = rng.random(n) < 0.3
        targets[0] = True
        scores = np.round(rng.random(n), 1)  # many ties
        assert stepwise_average_precision(scores, targets) == pytest.approx(
            average_precision_score(targets, scores), abs=1e-12)
    assert np.isnan(stepwise_average_precision([0.1, 0.2], [0, 0]))


def test_scores_split_classes_by_training_images():
    rng = np.random.default_rng(1)
    targets = rng.random((50, 4)) < 0.4
    targets[0] = True
    scores = rng.random((50, 4))
    counts = [100, 99, 20, 19]  # head | medium, medium | tail at the thresholds
    results, ap = multilabel_scores(scores, targets, counts)
    ref = [average_precision_score(targets[:, k], scores[:, k]) * 100 for k in range(4)]
    np.testing.assert_allclose(ap, ref)
    assert results["mAP"] == pytest.approx(np.mean(ref))
    assert results["mAP_head"] == pytest.approx(ref[0])
    assert results["mAP_medium"] == pytest.approx(np.mean(ref[1:3]))
    assert results["mAP_tail"] == pytest.approx(ref[3])


def test_classes_without_positives_are_left_out_of_the_mean():
    targets = np.array([[1, 0], [0, 0], [1, 0]])
    results, ap = multilabel_scores(np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.5]]), targets)
    assert np.isnan(ap[1]) and results["mAP"] == pytest.approx(100.0)


def _evaluator_worker(rank, world_size, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    g = torch.Generator().manual_seed(0)
    scores, labels = torch.rand(30, 3, generator=g), (torch.rand(30, 3, generator=g) < 0.5).float()
    ev = MultiLabelEvaluator("ml_unregistered_for_eval", class_image_count=[150, 50, 5])
    ev.reset()
    for i in range(rank, 30, world_size):  # each rank sees its share of the images
        ev.process([{"labels": labels[i]}], [{"scores": scores[i]}])
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(ev.evaluate(), f)
    dist.barrier()  # rank 1 returns before rank 0 has scored: leave the group together
    dist.destroy_process_group()


def test_evaluator_gathers_over_processes_to_the_single_process_result(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_evaluator_worker, args=(2, str(tmp_path / "init"), str(tmp_path)),
                       nprocs=2, start_method="spawn")
    g = torch.Generator().manual_seed(0)
    scores, labels = torch.rand(30, 3, generator=g), (torch.rand(30, 3, generator=g) < 0.5).float()
    single = MultiLabelEvaluator("ml_unregistered_for_eval", class_image_count=[150, 50, 5],
                                 output_dir=str(tmp_path / "single"))
    single.process([{"labels": lab} for lab in labels], [{"scores": s} for s in scores])
    expected = single.evaluate()["multilabel"]
    assert set(expected) == {"mAP", "mAP_head", "mAP_medium", "mAP_tail"}
    assert json.load(open(tmp_path / "rank0.json"))["multilabel"] == pytest.approx(expected)
    assert json.load(open(tmp_path / "rank1.json")) == {}
    per_class = json.load(open(tmp_path / "single" / "multilabel_ap.json"))["per_class_ap"]
    assert len(per_class) == 3


# --- data ----------------------------------------------------------------------------------


def test_synthetic_multilabel_set_is_long_tailed_and_complete(ml_root):
    base = ml_root / "ml_synthetic"
    assert (base / COMPLETE_MARKER).exists()
    stats = json.load(open(base / "longtail" / "class_stats.json"))
    counts = np.array(stats["class_freq"])
    assert counts.max() >= 100 and counts.min() < 20 and counts.min() >= 1  # head, medium, tail
    assert ((counts >= 20) & (counts < 100)).any()
    assert len(json.load(open(base / "longtail" / "img_id.json"))) == stats["num_images"]


def test_loader_keeps_the_listed_images_and_stores_their_statistics(ml_root):
    name = _register("ml_test_train", ml_root)
    dicts = DatasetCatalog.get(name)
    stats_file = json.load(open(ml_root / "ml_synthetic" / "longtail" / "class_stats.json"))
    assert len(dicts) == stats_file["num_images"]
    assert all(os.path.isfile(d["file_name"]) and d["annotations"] for d in dicts)
    stats = get_class_stats(name)
    np.testing.assert_array_equal(stats.image_count, stats_file["class_freq"])
    assert MetadataCatalog.get(name).evaluator_type == "multilabel"
    assert len(MetadataCatalog.get(name).thing_classes) == NUM_CLASSES


def test_statistics_come_from_the_stats_file_without_reading_images(ml_root, tmp_path):
    base = ml_root / "ml_synthetic"
    name = "ml_test_stats_only"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_multilabel_dataset(name, str(tmp_path / "absent.json"), str(tmp_path / "absent"),
                                class_stats_file=str(base / "longtail" / "class_stats.json"))
    stats = get_class_stats(name)
    assert stats.image_count.tolist() == json.load(
        open(base / "longtail" / "class_stats.json"))["class_freq"]


def test_ids_missing_from_the_annotations_and_images_missing_from_the_folder(ml_root, tmp_path):
    base = ml_root / "ml_synthetic"
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps([1, 2, 999999, 888888]))
    with pytest.raises(ValueError, match=r"2 image ids .* e\.g\. \[999999, 888888\]"):
        load_multilabel_dataset(str(base / "annotations" / "pool.json"), str(base), str(ids))
    text_ids = tmp_path / "img_id.pkl"  # the DB project's one-id-per-line lists work too
    text_ids.write_text("1\n2\n3\n")
    with pytest.raises(FileNotFoundError, match=r"3 of 3 images are missing .*pool/000001.jpg"):
        load_multilabel_dataset(str(base / "annotations" / "pool.json"), str(tmp_path),
                                str(text_ids))


def test_mapper_gives_a_fixed_size_image_and_a_multi_hot_vector(ml_root):
    dicts = DatasetCatalog.get(_register("ml_test_mapper", ml_root))
    for is_train in (True, False):
        out = MultiLabelDatasetMapper(_cfg(), is_train=is_train)(dicts[0])
        assert out["image"].shape == (3, SIZE, SIZE)
        expected = torch.zeros(NUM_CLASSES)
        expected[[a["category_id"] for a in dicts[0]["annotations"]]] = 1
        assert torch.equal(out["labels"], expected) and "annotations" not in out


def test_class_aware_sampler_takes_consecutive_images_of_a_class():
    class_images = [np.arange(0, 10), np.arange(10, 14), np.arange(14, 30)]
    stream = iter(ClassAwareSampler(class_images, seed=0, samples_per_class=3))
    draws = [next(stream) for _ in range(90)]
    owner = np.searchsorted([10, 14, 30], draws, side="right")
    triples = owner.reshape(-1, 3)
    assert (triples == triples[:, :1]).all()
    assert sorted(np.bincount(triples[:, 0], minlength=3)) == [10, 10, 10]
    with pytest.raises(ValueError, match="CLASS_AWARE_SAMPLES_PER_CLASS"):
        ClassAwareSampler(class_images, seed=0, samples_per_class=0)


# --- model ---------------------------------------------------------------------------------


def test_model_trains_on_multi_hot_targets_and_outputs_sigmoid_scores(ml_root):
    _register("ml_synthetic_train", ml_root)  # the config's statistics
    model = build_model(_cfg(**{"MODEL.DEVICE": "cpu"}))
    head = model.cls_score
    assert head.out_features == NUM_CLASSES and torch.count_nonzero(head.bias) == 0
    inputs = [{"image": torch.rand(3, SIZE, SIZE) * 255,
               "labels": (torch.arange(NUM_CLASSES) % (i + 2) == 0).float()} for i in range(4)]
    losses = model(inputs)
    assert set(losses) == {"loss_cls"} and losses["loss_cls"].requires_grad
    losses["loss_cls"].backward()
    assert head.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        outputs = model(inputs)
    assert len(outputs) == 4 and outputs[0]["scores"].shape == (NUM_CLASSES,)
    assert ((outputs[0]["scores"] > 0) & (outputs[0]["scores"] < 1)).all()


def test_model_refuses_a_single_label_loss_and_a_missing_feature():
    with pytest.raises(ValueError, match="does not take multi-label targets"):
        build_model(_cfg(**{"MODEL.LT.CLS_LOSS": "SoftmaxCELoss", "DATASETS.TRAIN": ()}))
    with pytest.raises(ValueError, match="IN_FEATURE='p5' is not an output"):
        build_model(_cfg(**{"MODEL.LT.MULTILABEL.IN_FEATURE": "p5", "DATASETS.TRAIN": ()}))


def test_config_mixing_a_detector_and_a_multilabel_dataset_is_refused(ml_root):
    _register("ml_synthetic_train", ml_root)
    cfg = _cfg(**{"MODEL.META_ARCHITECTURE": "GeneralizedRCNN", "DATASETS.TEST": ()})
    with pytest.raises(ValueError, match="multi-label classification dataset"):
        check_config(cfg)


def test_full_model_clipping_bounds_the_joint_gradient_norm():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))
    opt = with_full_model_clipping(torch.optim.SGD([a, b], lr=1.0), max_norm=1.0)
    a.grad, b.grad = torch.full((3,), 3.0), torch.full((4,), 4.0)
    opt.step()
    joint = torch.cat([a.detach(), b.detach()]).norm()
    assert joint == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(a.detach() / b.detach()[0], torch.full((3,), 0.75))  # direction kept


# --- end to end ----------------------------------------------------------------------------


def _ml_opts(out_dir):
    return ["MODEL.LT.MULTILABEL.NUM_CLASSES", str(NUM_CLASSES),
            "INPUT.LT.MULTILABEL.IMAGE_SIZE", str(SIZE), "SOLVER.IMS_PER_BATCH", "8",
            "SOLVER.MAX_ITER", "12", "SOLVER.WARMUP_ITERS", "4", "SOLVER.STEPS", "()",
            "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out_dir)]


def test_train_and_evaluate_end_to_end_single_and_two_processes(ml_root, tmp_path):
    config = "configs/Synthetic-MLT/db_focal_tiny_PFC.yaml"
    proc = run_train_net(["--config-file", config, *_ml_opts(tmp_path)], ml_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mAP_head" in proc.stdout + proc.stderr
    trained = copypaste_metrics(proc.stdout + proc.stderr)["multilabel"]
    assert set(trained) == {"mAP", "mAP_head", "mAP_medium", "mAP_tail"}
    assert all(0 <= v <= 100 for v in trained.values())
    last = json.loads(open(tmp_path / "metrics.json").read().splitlines()[-1])
    assert last["multilabel/mAP"] == pytest.approx(trained["mAP"], abs=1e-3)

    weights = str(tmp_path / "model_final.pth")
    proc = run_train_net(["--config-file", config, "--eval-only", "--num-gpus", "2",
                          "MODEL.WEIGHTS", weights, *_ml_opts(tmp_path / "eval2")], ml_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = copypaste_metrics(proc.stdout + proc.stderr)["multilabel"]
    assert two == pytest.approx(trained, abs=1e-3)
    saved = json.loads(open(tmp_path / "eval2" / "metrics.json").read().splitlines()[-1])
    assert saved["eval_only"] and saved["multilabel/mAP_tail"] == pytest.approx(
        trained["mAP_tail"], abs=1e-3)


def test_missing_synthetic_set_names_the_command_that_makes_it(tmp_path):
    proc = run_train_net(["--config-file", "configs/Synthetic-MLT/bce_tiny_PFC.yaml",
                          *_ml_opts(tmp_path)], tmp_path)
    assert proc.returncode != 0
    assert "prepare_synthetic_lt.py --kind multilabel" in proc.stderr


def test_neck_init_kaiming_fan_out_is_the_projects():
    from lt_d2.modeling.multilabel_classifier import PooledFCNeck

    torch.manual_seed(0)
    neck = PooledFCNeck(64, 32, 0.5, init="kaiming_fan_out")
    torch.manual_seed(0)
    fc = torch.nn.Linear(64, 32)
    torch.nn.init.kaiming_normal_(fc.weight, mode="fan_out")
    assert torch.equal(neck[2].weight, fc.weight) and not neck[2].bias.any()
    torch.manual_seed(0)
    default = PooledFCNeck(64, 32, 0.5)[2].weight
    torch.manual_seed(0)
    assert torch.equal(default, torch.nn.Linear(64, 32).weight)
    with pytest.raises(ValueError, match="NECK_INIT='xavier'"):
        PooledFCNeck(64, 32, 0.5, init="xavier")
