# Copyright (c) lt_d2 contributors.
"""An evaluation with undefined metrics (no detection at all) writes strict-JSON metrics.json
lines (NaN as null) and says why no long-tail report was written."""
import json
import math

import pytest
from detectron2.utils.events import EventStorage, JSONWriter

from lt_d2.engine import write_eval_metrics
from lt_d2.engine.metrics_json import make_strict

from .conftest import run_train_net, tiny_opts

CONFIG = "configs/Synthetic-LT/faster_rcnn_tiny_ce.yaml"


def _reject(token):
    raise ValueError(f"bare {token} in metrics.json")


def strict_lines(path):
    with open(path) as f:
        return [json.loads(line, parse_constant=_reject) for line in f]


def test_detectron2_json_writer_writes_nan_as_null(tmp_path):
    path = tmp_path / "metrics.json"
    writer = make_strict(JSONWriter(str(path)))
    with EventStorage(0) as storage:
        storage.put_scalars(**{"bbox/AP": float("nan"), "bbox/APr": 12.5}, smoothing_hint=False)
        storage.put_scalar("inf_metric", float("inf"), smoothing_hint=False)
        writer.write()
    writer.close()
    (line,) = strict_lines(path)
    assert line == {"bbox/AP": None, "bbox/APr": 12.5, "inf_metric": None, "iteration": 0}
    with pytest.raises(ValueError, match="bare NaN"):  # the check itself can fail
        json.loads('{"a": NaN}', parse_constant=_reject)


def test_eval_only_metrics_are_strict_json(tmp_path):
    write_eval_metrics(str(tmp_path), {"bbox": {"AP": float("nan"), "APr": 3.0}})
    (line,) = strict_lines(tmp_path / "metrics.json")
    assert line == {"eval_only": True, "bbox/AP": None, "bbox/APr": 3.0}


def test_a_model_without_detections_writes_valid_metrics_json(tiny_root, tmp_path):
    # no score exceeds 1: the model makes no detection, every AP is undefined
    opts = [*tiny_opts(), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1.0"]
    proc = run_train_net(["--config-file", CONFIG, "OUTPUT_DIR", str(tmp_path / "train"),
                          "SOLVER.MAX_ITER", "2", *opts], tiny_root)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "No predictions from the model!" in log
    assert "No long-tail report for bbox: no per-class AP was computed" in log
    records = strict_lines(tmp_path / "train" / "metrics.json")
    evaluation = [r for r in records if "bbox/AP" in r]
    assert evaluation and evaluation[-1]["bbox/AP"] is None and evaluation[-1]["bbox/APr"] is None
    assert all(math.isfinite(r["total_loss"]) for r in records if "total_loss" in r)

    proc = run_train_net(["--config-file", CONFIG, "--eval-only", "MODEL.WEIGHTS",
                          str(tmp_path / "train" / "model_final.pth"), "OUTPUT_DIR",
                          str(tmp_path / "eval"), *opts], tiny_root)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (line,) = strict_lines(tmp_path / "eval" / "metrics.json")
    assert line["eval_only"] is True and line["bbox/AP"] is None


def test_measured_metrics_skip_undefined_values(tmp_path):
    from lt_d2.reproduce.pipeline import measured_metrics

    write_eval_metrics(str(tmp_path), {"bbox": {"AP": float("nan"), "APr": 3.0}})
    assert measured_metrics(str(tmp_path / "metrics.json")) == {"bbox/APr": 3.0}
