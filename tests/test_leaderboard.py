"""tools/leaderboard.py: the table arithmetic, and one method end to end on the tiny synthetic set
for a few iterations (the full leaderboard is a benchmark, not a test)."""
import csv
import io
import json
import os
import subprocess
import sys

import pytest

from lt_d2.leaderboard import METHODS, markdown_table, plan_method, select_methods, summarize_runs
from lt_d2.leaderboard.report import csv_text
from lt_d2.leaderboard.run import own_training

from .conftest import REPO, tiny_opts


def _outcome(ap, seconds=60.0):
    return {"metrics": {"bbox/AP": ap, "bbox/APr": ap / 2, "bbox/APc": ap, "bbox/APf": ap * 1.5},
            "train_seconds": seconds, "train_cpu_seconds": 2 * seconds}


def test_rows_are_mean_and_sample_std_over_the_finished_seeds():
    row = summarize_runs(METHODS["eqlv2"], [_outcome(40.0), _outcome(44.0, 120.0), None])
    assert row["AP"] == pytest.approx((42.0, 2.8284271247))
    assert row["APr"] == pytest.approx((21.0, 1.4142135624))
    assert row["train_min"] == pytest.approx(1.5)
    assert (row["seeds"], row["of_seeds"], row["kind"]) == (2, 3, "end-to-end")
    table = markdown_table([row, summarize_runs(METHODS["crt"], [None, None, None])])
    assert ("| eqlv2 | end-to-end | 42.0 ± 2.8 | 21.0 ± 1.4 | 42.0 ± 2.8 | 63.0 ± 4.2 | 1.5 | 3.0 "
            "| 2/3 |") in table
    assert "| crt | decoupled | - | - | - | - | - | - | 0/3 |" in table
    parsed = list(csv.DictReader(io.StringIO(csv_text([row]))))
    assert parsed[0]["AP_mean"] == "42.0000" and parsed[0]["APf_std"] == "4.2426"


def test_one_seed_has_no_std_column_values():
    table = markdown_table([summarize_runs(METHODS["softmax_ce"], [_outcome(40.0)])])
    assert "| softmax_ce | end-to-end | 40.0 | 20.0 | 40.0 | 60.0 | 1.0 | 2.0 | 1/1 |" in table


def test_methods_and_their_stages():
    assert [m.name for m in select_methods(["crt", "softmax_ce"])] == ["softmax_ce", "crt"]
    with pytest.raises(ValueError, match="Unknown method.*nope.*choose from: softmax_ce"):
        select_methods(["nope"])
    for method in METHODS.values():
        for step in method.pipeline:
            assert step.kind == "surgery" or os.path.isfile(os.path.join(REPO, step.config))
    # every decoupled method starts from the softmax CE stage of the same seed
    stage_one = plan_method(METHODS["softmax_ce"], 3, "/tmp/lb")[0]
    for name in ("crt", "lws", "bags", "acsl_tunefc", "bacl", "softmax_ce_norcal"):
        first = plan_method(METHODS[name], 3, "/tmp/lb")[0]
        assert first.argv == stage_one.argv and first.output == stage_one.output
    assert "seed3" in stage_one.output and stage_one.argv[-2:] == ["SEED", "3"]
    # a row's training time is what the method adds to the shared stage one
    own = {name: [a.output for a in own_training(METHODS[name], plan_method(METHODS[name], 3,
                                                                            "/tmp/lb"))]
           for name in ("softmax_ce", "crt", "softmax_ce_norcal")}
    assert own["softmax_ce"] == [stage_one.output] and own["softmax_ce_norcal"] == []
    assert own["crt"] == [os.path.join("/tmp/lb/seed3/Synthetic-LT/decoupled/crt_faster_rcnn_tiny",
                                       "model_final.pth")]


def leaderboard(*args, env):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "leaderboard.py"), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_one_method_end_to_end_and_resumable(tiny_root, tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tiny_root), PYTHONWARNINGS="ignore")
    out = tmp_path / "lb"
    args = ["--methods", "softmax_ce", "--output-dir", str(out), *tiny_opts(),
            "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "100"]
    proc = leaderboard(*args, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.png"):
        assert (out / name).is_file(), name
    table = (out / "leaderboard.md").read_text()
    assert "| softmax_ce | end-to-end |" in table and "1/1 |" in table
    stage = out / "seed0" / "Synthetic-LT" / "faster_rcnn_tiny_ce"
    with open(stage / "train_seconds.json") as f:
        times = json.load(f)
    assert times["seconds"] > 0 and times["cpu_seconds"] > 0
    stamp = os.path.getmtime(stage / "model_final.pth")

    proc = leaderboard(*args, env=env)  # finished: read, not retrained
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done (" in proc.stdout and os.path.getmtime(stage / "model_final.pth") == stamp
    assert (out / "leaderboard.md").read_text() == table

    proc = leaderboard("--methods", "softmax_ce", "crt", "--seeds", "0", "1", "--report-only",
                       "--output-dir", str(out), *args[4:], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| crt | decoupled | - |" in proc.stdout and "1/2 |" in proc.stdout
    assert not (out / "seed1").exists()


def test_bad_requests_name_the_fix(tmp_path):
    proc = leaderboard("--methods", "nope", "--output-dir", str(tmp_path), env=dict(os.environ))
    assert proc.returncode != 0 and "choose from: softmax_ce" in proc.stderr
    proc = leaderboard("--output-dir", str(tmp_path), "SOLVER.MAX_ITER", env=dict(os.environ))
    assert proc.returncode != 0 and "KEY VALUE pairs" in proc.stderr


def test_the_readme_table_is_the_published_leaderboard():
    folder = os.path.join(REPO, "configs", "Synthetic-LT", "leaderboard")
    with open(os.path.join(folder, "leaderboard.md")) as f:
        table = f.read().strip()
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    assert table in readme, "copy output/leaderboard/leaderboard.md into the README"
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == list(METHODS)
    assert os.path.isfile(os.path.join(folder, "leaderboard.png"))
