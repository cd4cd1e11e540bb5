# Copyright (c) lt_d2 contributors.
"""`tools/train_net.py --eval-only` on LVIS-format data: both backends agree, Fixed AP and the
long-tail report appear where TEST.LT asks for them."""
import json

import pytest

from .conftest import copypaste_metrics, run_train_net, tiny_opts

CONFIG = "configs/Synthetic-LT/faster_rcnn_tiny_ce.yaml"
# an untrained model still scores: keep every detection so the metrics are not all zero
EVAL = ["--eval-only", "MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]


@pytest.fixture(scope="module")
def two_backends(tiny_root, tmp_path_factory):
    out = {}
    for backend in ("fast", "lvis-api"):
        folder = tmp_path_factory.mktemp(backend)
        extra = ["TEST.LT.FIXED_AP", "True", "TEST.LT.FIXED_AP_TOPK", "50",
                 "TEST.DETECTIONS_PER_IMAGE", "-1"]
        proc = run_train_net(["--config-file", CONFIG, *EVAL, *tiny_opts(), "SEED", "1",
                              "TEST.LT.LVIS_BACKEND", backend, *extra, "OUTPUT_DIR", str(folder)],
                             tiny_root)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[backend] = (folder, copypaste_metrics(proc.stdout + proc.stderr))
    return out


def test_fast_backend_reports_the_lvis_api_numbers(two_backends):
    for task in ("bbox", "bbox_fixed"):
        fast, api = two_backends["fast"][1][task], two_backends["lvis-api"][1][task]
        assert set(fast) == set(api) and len(fast) >= 4
        for key in api:
            assert fast[key] == pytest.approx(api[key], abs=1e-4), key  # copypaste: 4 decimals


def test_fixed_ap_is_reported_beside_standard_ap(two_backends):
    folder, metrics = two_backends["fast"]
    assert {"APfixed", "APfixed_r", "APfixed_c", "APfixed_f"} <= set(metrics["bbox_fixed"])
    last = json.loads(open(folder / "metrics.json").read().splitlines()[-1])
    assert "bbox_fixed/APfixed" in last and "bbox/AP" in last


def test_long_tail_report_files_are_written(two_backends):
    for backend in ("fast", "lvis-api"):
        inference = two_backends[backend][0] / "inference"
        report = json.load(open(inference / "longtail_report_bbox.json"))
        assert len(report["classes"]) == 12
        csv_lines = open(inference / "longtail_report_bbox.csv").read().splitlines()
        assert csv_lines[0].startswith(
            "class_id,name,image_count,frequency,ap") and len(csv_lines) == 13
        png = open(inference / "longtail_ap_vs_frequency_bbox.png", "rb").read()
        assert png.startswith(b"\x89PNG")
