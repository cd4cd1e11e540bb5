# Copyright (c) lt_d2 contributors.
"""tools/train_net.py end to end on CPU, run as a user runs it."""
import glob
import json
import os

import pytest

from .conftest import copypaste_metrics, run_train_net, tiny_opts

CONFIG = "configs/Synthetic-LT/faster_rcnn_tiny_ce.yaml"


def _check(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def trained(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    log = _check(run_train_net(
        ["--config-file", CONFIG, "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "20",
         "SOLVER.CHECKPOINT_PERIOD", "10", *tiny_opts()], tiny_root))
    return out, log


def test_training_writes_detectron2_layout_and_lvis_metrics(trained):
    out, log = trained
    files = set(os.listdir(out))
    assert {"config.yaml", "log.txt", "metrics.json", "last_checkpoint", "model_final.pth",
            "model_0000009.pth", "inference"} <= files
    assert glob.glob(str(out / "events.out.tfevents.*"))
    metrics = copypaste_metrics(log)["bbox"]
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"}
    with open(out / "metrics.json") as f:
        records = [json.loads(line) for line in f]
    assert max(r["iteration"] for r in records if "total_loss" in r) == 19
    assert any("bbox/APr" in r for r in records)


def test_eval_only_reproduces_the_printed_metrics(trained, tiny_root, tmp_path):
    out, log = trained
    proc = run_train_net(["--config-file", CONFIG, "--eval-only", "MODEL.WEIGHTS",
                          str(out / "model_final.pth"), "OUTPUT_DIR", str(tmp_path), *tiny_opts()],
                         tiny_root)
    assert copypaste_metrics(_check(proc)) == copypaste_metrics(log)


def test_resume_continues_from_the_last_checkpoint(trained, tiny_root, tmp_path):
    out, _ = trained
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in ("model_0000009.pth", "config.yaml"):
        (resumed / name).write_bytes((out / name).read_bytes())
    (resumed / "last_checkpoint").write_text("model_0000009.pth")
    log = _check(run_train_net(
        ["--config-file", CONFIG, "--resume", "OUTPUT_DIR", str(resumed), "SOLVER.MAX_ITER", "14",
         "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", *tiny_opts()], tiny_root))
    assert "Starting training from iteration 10" in log
    with open(resumed / "metrics.json") as f:
        iterations = [r["iteration"] for r in map(json.loads, f) if "total_loss" in r]
    assert min(iterations) >= 10 and max(iterations) == 13


def test_two_process_gloo_run_trains_and_evaluates(tiny_root, tmp_path):
    log = _check(run_train_net(
        ["--config-file", CONFIG, "--num-gpus", "2", "--dist-url", "auto", "OUTPUT_DIR",
         str(tmp_path), "SOLVER.MAX_ITER", "6", *tiny_opts()], tiny_root))
    assert "world size: 2" in log.lower() or "Rank of current process: 0. World size: 2" in log
    assert "APr" in copypaste_metrics(log)["bbox"]
    assert (tmp_path / "model_final.pth").exists()


@pytest.mark.parametrize("extra, message", [
    (["MODEL.ROI_HEADS.NUM_CLASSES", "7"], "Set MODEL.ROI_HEADS.NUM_CLASSES 12"),
    (["DATALOADER.SAMPLER_TRAIN", "Nope"], "Registered samplers: ClassAwareSampler, Repeat"),
    (["DATASETS.TRAIN", "('lvis_v1_train',)"], "DETECTRON2_DATASETS"),
    (["MODEL.DEVICE", "cuda"], "MODEL.DEVICE cpu"),
])
def test_bad_config_fails_early_with_the_fix(tiny_root, tmp_path, extra, message):
    opts = tiny_opts()
    if extra[0] == "MODEL.ROI_HEADS.NUM_CLASSES":
        opts = opts[2:]  # tiny_opts starts with the right NUM_CLASSES
    proc = run_train_net(["--config-file", CONFIG, "OUTPUT_DIR", str(tmp_path),
                          "SOLVER.MAX_ITER", "5", *opts, *extra], tiny_root)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-3000:]
    assert not glob.glob(str(tmp_path / "*.pth"))


def test_too_many_processes_is_refused(tiny_root, tmp_path):
    proc = run_train_net(["--config-file", CONFIG, "--num-gpus", "512",
                          "OUTPUT_DIR", str(tmp_path)], tiny_root)
    assert proc.returncode != 0
    assert "--num-gpus 512 is more than this machine can run" in proc.stderr
    assert not os.listdir(tmp_path)


def test_missing_dataset_names_the_generator(tmp_path):
    proc = run_train_net(["--config-file", CONFIG, "OUTPUT_DIR", str(tmp_path / "out")], tmp_path)
    assert proc.returncode != 0
    assert "prepare_synthetic_lt.py" in proc.stderr and "DETECTRON2_DATASETS" in proc.stderr


@pytest.mark.parametrize("config, tasks", [
    ("configs/Synthetic-LT/mask_rcnn_tiny_ce.yaml", {"bbox", "segm"}),
    ("configs/Synthetic-LT/cascade_rcnn_tiny_ce.yaml", {"bbox"}),
])
def test_mask_and_cascade_variants_train_and_evaluate(tiny_root, tmp_path, config, tasks):
    log = _check(run_train_net(["--config-file", config, "OUTPUT_DIR", str(tmp_path),
                                "SOLVER.MAX_ITER", "4", *tiny_opts()], tiny_root))
    metrics = copypaste_metrics(log)
    assert set(metrics) == tasks
    assert all("APr" in m for m in metrics.values())
