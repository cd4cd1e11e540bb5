# Copyright (c) lt_d2 contributors.
"""configs/paper_results.yaml and tools/reproduce.py: every published result resolves to configs
that match its recipe, every pipeline plans, and a two-stage pipeline runs end to end."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from detectron2.data import DatasetCatalog

from lt_d2.reproduce import (
    PaperResultsError,
    load_paper_results,
    plan_pipeline,
    recipe_mismatches,
    resolve_config,
)
from lt_d2.reproduce.results import DEFAULT_RESULTS

from .conftest import REPO, tiny_opts

SYNTHETIC = os.path.join(REPO, "configs", "Synthetic-LT", "paper_results_synthetic.yaml")
PUBLISHED_IDS = [
    "db_coco_mlt_r50", "db_voc_mlt_r50",
    "bacl_baseline_r50_lvis_v0.5", "bacl_baseline_r50_lvis_v1", "bacl_baseline_r101_lvis_v0.5",
    "bacl_baseline_r101_lvis_v1", "bacl_r50_lvis_v0.5", "bacl_r50_lvis_v1", "bacl_r101_lvis_v0.5",
    "bacl_r101_lvis_v1",
    "eql_repo_baseline_r50_lvis_v1", "eql_r50_lvis_v1", "rfs_r50_lvis_v1", "lws_r50_lvis_v1",
    "crt_r50_lvis_v1", "bags_r50_lvis_v1", "eqlv2_r50_lvis_v1",
    "oi_faster_r50", "oi_eql_r50", "oi_eqlv2_r50", "oi_faster_r101", "oi_eql_r101", "oi_eqlv2_r101",
    "acsl_baseline_r50", "acsl_r50", "acsl_baseline_r101", "acsl_r101", "acsl_baseline_x101",
    "acsl_x101", "acsl_baseline_cascade_r101", "acsl_cascade_r101", "acsl_baseline_cascade_x101",
    "acsl_cascade_x101",
]
RESULTS = {**load_paper_results(DEFAULT_RESULTS), **load_paper_results(SYNTHETIC)}


def reproduce_main(argv):
    """tools/reproduce.py's main, run in this process."""
    spec = importlib.util.spec_from_file_location("reproduce_tool",
                                                  os.path.join(REPO, "tools", "reproduce.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def reproduce(*args, env=None, cwd=REPO):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "reproduce.py"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_the_results_file_has_exactly_the_published_ids():
    assert list(load_paper_results()) == PUBLISHED_IDS


@pytest.mark.parametrize("result_id", list(RESULTS))
def test_every_config_of_a_pipeline_resolves_and_matches_its_recipe(result_id):
    result = RESULTS[result_id]
    assert result.dataset in DatasetCatalog.list()
    assert all("/" in metric for metric in result.published)
    for i, (step, recipe) in enumerate(zip(result.train_steps, result.recipe)):
        cfg = resolve_config(step.config)
        assert result.pipeline.index(step) == 0 or "weights" not in recipe
        assert not recipe_mismatches(recipe, cfg, wired_weights=result.pipeline.index(step) > 0)
        for key in ("images_seen", "batch", "base_lr", "steps"):
            assert key in recipe, f"stage {i + 1} of {result_id} has no '{key}'"
        if cfg.MODEL.LT.NORM_EVAL:  # mmdetection decays trainable batch-norm weights alike
            assert cfg.SOLVER.WEIGHT_DECAY_NORM == cfg.SOLVER.WEIGHT_DECAY, step.config
        with open(os.path.join(REPO, step.config)) as f:
            header = f.read(2000)
        if result_id in PUBLISHED_IDS:  # a paper config says which row it reproduces
            assert result_id in header or "Reproduces" in header, step.config
    last = resolve_config(result.train_steps[-1].config)
    assert result.dataset in last.DATASETS.TEST


def test_recipe_check_catches_a_different_schedule_and_settings():
    result = RESULTS["synthetic_crt_tiny"]
    recipe = result.recipe[0]
    cfg = resolve_config(result.train_steps[0].config)
    assert recipe_mismatches(recipe, cfg) == []
    cfg.SOLVER.MAX_ITER = int(cfg.SOLVER.MAX_ITER * 1.02)  # 2 % longer: images seen and steps
    problems = recipe_mismatches(recipe, cfg)
    assert any(p.startswith("images seen") for p in problems)
    assert any(p.startswith("lr steps") for p in problems)
    cfg = resolve_config(result.train_steps[0].config, ["SOLVER.BASE_LR", "0.01",
                                                        "DATALOADER.SAMPLER_TRAIN",
                                                        "ClassAwareSampler"])
    problems = recipe_mismatches({**recipe, "grad_clip": 35.0}, cfg)
    assert {p.split(":")[0] for p in problems} == {"base_lr", "sampler", "grad_clip"}
    assert recipe_mismatches(recipe, resolve_config(result.train_steps[0].config),
                             wired_weights=True)[0].startswith("weights")
    # a results file written before the loss renames still matches; another loss does not
    cfg = resolve_config(result.train_steps[0].config)
    assert recipe_mismatches({**recipe, "cls_loss": "SoftmaxCE"}, cfg) == []
    assert recipe_mismatches({**recipe, "cls_loss": "SigmoidCE"}, cfg)[0].startswith("cls_loss")


@pytest.mark.parametrize("text, message", [
    ("- {id: a, paper: p, dataset: d, published: {bbox/AP: 1}, pipeline: [{surgery: remove}], "
     "recipe: []}", "put a train step first"),
    ("- {id: a, paper: p, dataset: d, published: {bbox/AP: 1}, pipeline: [{train: c.yaml}], "
     "recipe: []}", "'recipe' is a list of 1"),
    ("- {id: a, paper: p, dataset: d, published: {bbox/AP: 1}, pipeline: [{train: c.yaml}], "
     "recipe: [{lr: 1}]}", "unknown recipe keys ['lr']"),
    ("- {id: a, paper: p, dataset: d, published: {}, pipeline: [{train: c.yaml}], recipe: [{}]}",
     "'published' maps metric names to numbers"),
    ("- {id: a, paper: p, published: {bbox/AP: 1}, pipeline: [{train: c.yaml}], recipe: [{}]}",
     "missing fields ['dataset']"),
    ("- {id: a, paper: p, dataset: d, published: {bbox/AP: 1}, pipeline: [{surgery: cut}], "
     "recipe: []}", "surgery is 'remove' or 'reset'"),
])
def test_bad_results_files_are_refused_with_the_reason(tmp_path, text, message):
    path = tmp_path / "results.yaml"
    path.write_text(text)
    with pytest.raises(PaperResultsError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_paper_results(str(path))


def _chain(actions):
    """Check that each step's input is the previous step's output; return the train commands."""
    previous = None
    for a in actions:
        if a.kind == "train":
            if previous:
                i = a.argv.index("MODEL.WEIGHTS")
                assert a.argv[i + 1] == previous
            else:
                assert "MODEL.WEIGHTS" not in a.argv
        elif a.kind == "surgery" and a.needs:
            assert a.argv[a.argv.index("--ckpt-path") + 1] == previous
        if a.kind != "evaluate":
            previous = a.output
    return [a for a in actions if a.kind == "train"]


@pytest.mark.parametrize("result_id", PUBLISHED_IDS)
def test_dry_run_prints_every_stage_wired_to_the_previous_one(result_id, tmp_path):
    result = RESULTS[result_id]
    actions = plan_pipeline(result, str(tmp_path), num_gpus=8)
    trains = _chain(actions)
    assert [a.record["config"] for a in trains] == [s.config for s in result.train_steps]
    assert all(a.argv[a.argv.index("--num-gpus") + 1] == "8" for a in trains)
    assert [a.kind for a in actions].count("surgery") == [s.kind for s in result.pipeline].count(
        "surgery")
    assert actions[-1].kind == "evaluate" and "--eval-only" in actions[-1].argv
    assert not any(a.done for a in actions)
    assert reproduce_main([result_id, "--dry-run", "--num-gpus",
                          "8", "--output-dir", str(tmp_path)]) == 0
    assert not os.listdir(tmp_path)  # a dry run writes nothing


def test_list_prints_every_id_with_its_main_metric(capsys):
    assert reproduce_main(["--list"]) == 0
    out = capsys.readouterr().out
    for result_id, result in load_paper_results().items():
        line = next(l for l in out.splitlines() if l.startswith(result_id + " "))
        assert result.main_metric in line and f"{result.published[result.main_metric]:g}" in line


def test_bad_requests_name_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit, match="Unknown id 'eqlv3'. Valid ids: db_coco_mlt_r50, "):
        reproduce_main(["eqlv3"])
    # LVIS is not here: the missing dataset is named before anything runs
    with pytest.raises(SystemExit, match="needs dataset 'lvis_v1_train'.*datasets/README.md"):
        reproduce_main(["crt_r50_lvis_v1", "--output-dir", str(tmp_path)])
    # stage two alone, before stage one: name the step to run first
    with pytest.raises(SystemExit, match=r"Step 3 \(train .*crt.*\) needs "
                                         r".*model_reset_remove.pth, made by step 2 "
                                         r"\(surgery remove\): run it first"):
        reproduce_main(["crt_r50_lvis_v1", "--step", "3", "--output-dir", str(tmp_path)])
    assert not os.listdir(tmp_path)


def test_two_stage_pipeline_runs_resumes_and_reports(tiny_root, tmp_path):
    """The synthetic entry (train -> surgery remove -> cRT stage two) as a user runs it."""
    out = tmp_path / "reproduce"
    env = dict(os.environ, DETECTRON2_DATASETS=str(tiny_root), PYTHONWARNINGS="ignore")
    opts = [*tiny_opts(), "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "100"]
    args = ["synthetic_crt_tiny", "--results", SYNTHETIC, "--output-dir", str(out), *opts]
    proc = reproduce(*args, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    stage1 = out / "Synthetic-LT" / "faster_rcnn_tiny_ce"
    stage2 = out / "Synthetic-LT" / "decoupled" / "crt_faster_rcnn_tiny"
    for f in (stage1 / "model_final.pth", stage1 / "model_reset_remove.pth",
              stage2 / "model_final.pth"):
        assert f.is_file(), f
    with open(stage2 / "config.yaml") as f:  # stage two started from the surgery output
        assert f"WEIGHTS: {stage1 / 'model_reset_remove.pth'}" in f.read()
    with open(out / "results" / "synthetic_crt_tiny.json") as f:
        report = json.load(f)
    assert set(report["measured"]) == {"bbox/AP", "bbox/APr", "bbox/APc", "bbox/APf"}
    assert report["overrides"] == opts
    assert f"{report['measured']['bbox/AP']:.2f}" in proc.stdout
    assert "published" in proc.stdout and "measured" in proc.stdout

    # again: nothing is retrained, the table is printed from the stored metrics
    stamps = {p: os.path.getmtime(p)
              for p in (stage1 / "model_final.pth", stage2 / "model_final.pth")}
    proc = reproduce(*args, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done (") == 3
    assert stamps == {p: os.path.getmtime(p) for p in stamps}
    # other overrides would reuse a stage made differently: refused, nothing touched
    proc = reproduce(*args[:-2], "SOLVER.CHECKPOINT_PERIOD", "50", env=env)
    assert proc.returncode != 0 and "--overwrite" in proc.stderr
    assert stamps == {p: os.path.getmtime(p) for p in stamps}


def test_an_interrupted_stage_resumes_and_a_retrained_stage_redoes_surgery(tmp_path):
    result = RESULTS["synthetic_crt_tiny"]
    actions = plan_pipeline(result, str(tmp_path))
    stage1 = os.path.dirname(actions[0].output)
    os.makedirs(stage1)
    with open(os.path.join(stage1, "last_checkpoint"), "w") as f:
        f.write("model_0000499.pth")
    actions = plan_pipeline(result, str(tmp_path))
    assert "--resume" in actions[0].argv and not actions[0].done
    # a finished stage one with an older surgery output: the surgery is redone, overwriting it
    for name in ("model_reset_remove.pth", "model_final.pth"):
        with open(os.path.join(stage1, name), "w") as f:
            f.write("x")
    os.utime(os.path.join(stage1, "model_reset_remove.pth"), (0, 0))
    actions = plan_pipeline(result, str(tmp_path))
    assert actions[0].done and "--resume" not in actions[0].argv
    assert not actions[1].done and "--overwrite" in actions[1].argv
    assert not actions[2].done


def test_the_readme_table_is_the_results_file():
    from contextlib import redirect_stdout
    from io import StringIO

    out = StringIO()
    with redirect_stdout(out):
        assert reproduce_main(["--list", "--markdown"]) == 0
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    assert out.getvalue().strip() in readme, "regenerate: tools/reproduce.py --list --markdown"
