# Copyright (c) lt_d2 contributors.
"""Shared fixtures: a tiny synthetic long-tailed dataset, generated once per test session."""
import os
import subprocess
import sys

import pytest

import lt_d2  # noqa: F401  compatibility fixes before any detectron2.data import

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(num_classes=12, max_images=150, min_images=2, val_images_per_class=3, image_size=64,
            min_size=10, max_size=24)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """A $DETECTRON2_DATASETS folder that holds a 12-class synthetic set at 64x64."""
    from lt_d2.data.synthetic import generate_synthetic_lt

    root = tmp_path_factory.mktemp("datasets")
    generate_synthetic_lt(str(root / "lt_synthetic"), seed=3, **TINY)
    return root


def tiny_opts(num_classes=TINY["num_classes"], size=TINY["image_size"]):
    """Command-line overrides that fit the synthetic config to the tiny dataset."""
    return [
        "MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes),
        "INPUT.MIN_SIZE_TRAIN", f"({size},)", "INPUT.MAX_SIZE_TRAIN", str(size),
        "INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST", str(size),
        "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "5", "SOLVER.STEPS", "()",
        "DATALOADER.NUM_WORKERS", "0",
    ]


def run_train_net(args, datasets_root, timeout=600):
    """Run tools/train_net.py as a user would; returns the CompletedProcess (text output)."""
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


def copypaste_metrics(output):
    """The metrics of the 'copypaste:' lines detectron2 prints after an evaluation."""
    metrics, names = {}, None
    for line in output.splitlines():
        if "copypaste: " not in line:
            continue
        payload = line.split("copypaste: ", 1)[1]
        if payload.startswith("Task: "):
            task = payload[len("Task: "):]
        elif names is None:
            names = payload.split(",")
        else:
            metrics[task] = dict(zip(names, (float(v) for v in payload.split(","))))
            names = None
    return metrics
