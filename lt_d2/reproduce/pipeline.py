# Copyright (c) lt_d2 contributors.
"""Run the pipeline of a published result: each step is one command of lt_d2's tools
(``tools/train_net.py``, ``tools/ckpt_surgery.py``), so ``--dry-run`` prints exactly what runs.

Layout under the output folder: ``<config path below configs/, no .yaml>/`` for each training
stage (stages are shared between results: cRT, LWS and BAGS reuse one stage one), surgery outputs
beside the checkpoint they come from, ``init/`` for surgery of a downloaded checkpoint, and
``results/<id>.json`` with the published and measured numbers. A stage whose ``model_final.pth``
exists is finished and never retrained; one with a ``last_checkpoint`` resumes.
"""
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field

from ..file_io import write_json_atomic
from .results import REPO, PaperResultsError, resolve_config

STAGE_RECORD = "reproduce_stage.json"


@dataclass
class Action:
    """One command of a pipeline, with what it produces and whether that exists already."""

    step: int  # 1-based pipeline step (evaluation: the last train step's)
    kind: str  # "train", "surgery" or "evaluate"
    describe: str
    argv: list
    output: str  # model_final.pth, the surgery output, or metrics.json
    done: bool
    needs: str = None  # input file that an earlier step produces
    record: dict = field(default=None)  # train: what the stage folder was made with

    def command(self):
        return shlex.join(self.argv)


def stage_dir(output_dir, config):
    rel = os.path.relpath(os.path.join(REPO, config), os.path.join(REPO, "configs"))
    return os.path.join(output_dir, os.path.splitext(rel)[0])


def _surgery_output(src, method, num_classes, output_dir, from_input):
    suffix = f"_{num_classes}cls" if num_classes else ""
    if from_input:  # a model-zoo URL or another folder: keep its name, never write beside it
        name = os.path.splitext(os.path.basename(src.rstrip("/")))[0]
        return os.path.join(output_dir, "init", f"{name}_reset_{method}{suffix}.pth")
    return os.path.join(os.path.dirname(src), f"model_reset_{method}{suffix}.pth")


def _has_metrics(metrics_file, names):
    return bool(measured_metrics(metrics_file, names))


def plan_pipeline(result, output_dir, *, num_gpus=1, opts=(), overwrite=False,
                  python=sys.executable):
    """The actions that reproduce ``result`` (a PaperResult), in order, the last one the
    evaluation. ``opts`` (KEY VALUE ...) go to every training and evaluation command."""
    output_dir = os.path.abspath(output_dir)
    tool = lambda name: os.path.join(REPO, "tools", name)  # noqa: E731
    actions, previous, previous_done = [], None, True
    for i, step in enumerate(result.pipeline, 1):
        if step.kind == "surgery":
            src = step.input or previous
            out = _surgery_output(src, step.method, step.num_classes, output_dir, bool(step.input))
            fresh = os.path.isfile(out) and previous_done and (
                step.input or os.path.getmtime(out) >= os.path.getmtime(src))
            done = fresh and not overwrite
            argv = [python, tool("ckpt_surgery.py"), "--ckpt-path", src, "--method", step.method,
                    "--out", out]
            if step.num_classes:
                argv += ["--num-classes", str(step.num_classes)]
            if os.path.exists(out) and not done:  # stale: its input was (re)trained since
                argv.append("--overwrite")
            actions.append(Action(i, "surgery", step.describe(), argv, out, done,
                                  needs=None if step.input else src))
            previous, previous_done = out, done
            continue
        folder = stage_dir(output_dir, step.config)
        final = os.path.join(folder, "model_final.pth")
        done = os.path.isfile(final) and not overwrite
        resume = not done and not overwrite and os.path.isfile(
            os.path.join(folder, "last_checkpoint"))
        argv = [python, tool("train_net.py"), "--config-file", os.path.join(REPO, step.config),
                "--num-gpus", str(num_gpus)]
        argv += ["--resume"] if resume else []
        argv += ["OUTPUT_DIR", folder]
        argv += ["MODEL.WEIGHTS", previous] if previous else []
        argv += list(opts)
        record = {"config": step.config, "weights": previous, "opts": list(opts)}
        actions.append(Action(i, "train", step.describe(), argv, final, done, needs=previous,
                              record=record))
        previous, previous_done = final, done
    last = actions[-1]
    folder = os.path.dirname(last.output)
    metrics_file = os.path.join(folder, "metrics.json")
    argv = [python, tool("train_net.py"), "--config-file", last.argv[3], "--eval-only",
            "--num-gpus", str(num_gpus), "OUTPUT_DIR", folder, "MODEL.WEIGHTS", last.output,
            *opts]
    evaluated = last.done and _has_metrics(metrics_file, result.published)
    actions.append(Action(last.step, "evaluate", "evaluate", argv,
                          metrics_file, evaluated, needs=last.output,
                          record={"metrics": list(result.published)}))
    return actions


def check_stage_record(action, overwrite=False):
    """Refuse to continue or reuse a stage folder made by another config, weights or opts."""
    path = os.path.join(os.path.dirname(action.output), STAGE_RECORD)
    if overwrite or not os.path.isfile(path):
        return
    with open(path) as f:
        made = json.load(f)
    if made != action.record:
        raise PaperResultsError(
            f"{os.path.dirname(action.output)} was made by {made}, but step {action.step} needs "
            f"{action.record}. Choose another --output-dir, or pass --overwrite to retrain it.")


def check_inputs(actions, selected):
    """Raise, naming the step to run first, if a selected action's input does not exist."""
    by_output = {a.output: a for a in actions}
    for a in selected:
        if a.needs and not os.path.isfile(a.needs) and by_output.get(a.needs) not in selected:
            first = by_output.get(a.needs)
            hint = (f"step {first.step} ({first.describe}): run it first (--step {first.step}, "
                    "or the whole pipeline without --step)") if first else "an earlier step"
            raise PaperResultsError(
                f"Step {a.step} ({a.describe}) needs {a.needs}, made by {hint}.")


def check_datasets(actions, opts=()):
    """Fail before any training if a dataset of a pending training step is missing."""
    from ..data.catalog import check_dataset_files

    for a in actions:
        if a.kind != "train" or a.done:
            continue
        cfg = resolve_config(a.record["config"], opts)
        for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
            try:
                check_dataset_files(name)
            except FileNotFoundError as e:
                raise PaperResultsError(f"Step {a.step} ({a.describe}) needs dataset '{name}': "
                                        f"{e}") from e


def run_pipeline(actions, *, overwrite=False, log=print, run=subprocess.run):
    """Run the actions not done yet, in order (the evaluation only if training left no
    metrics). Raises PaperResultsError when a command fails."""
    for a in actions:
        if a.kind == "evaluate" and _has_metrics(a.output, a.record["metrics"]):
            log(f"[step {a.step}] evaluation: results in {a.output}")
            continue
        if a.kind == "train":
            check_stage_record(a, overwrite)
        if a.done:
            log(f"[step {a.step}] {a.describe}: done ({a.output} exists), skipped")
            continue
        if a.kind == "train":
            write_json_atomic(a.record, os.path.join(os.path.dirname(a.output), STAGE_RECORD),
                              indent=1)
        log(f"[step {a.step}] {a.describe}\n  $ {a.command()}")
        proc = run(a.argv, cwd=REPO)
        if proc.returncode != 0:
            raise PaperResultsError(f"Step {a.step} ({a.describe}) failed with exit code "
                                    f"{proc.returncode}; see its output above (and log.txt in "
                                    f"{os.path.dirname(a.output)}). Run again to resume.")


def measured_metrics(metrics_file, names=None):
    """The last evaluation in a detectron2 ``metrics.json`` (one json object per line):
    ``{metric: value}`` for ``names`` (all metric-like "task/metric" keys if None)."""
    if not os.path.isfile(metrics_file):
        return {}
    found = {}
    with open(metrics_file) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a killed process
            keys = [k for k in row if "/" in k and (names is None or k in names)
                    and isinstance(row[k], (int, float))]
            if keys:
                found = {k: float(row[k]) for k in keys}
    return found


def comparison_rows(published, measured):
    """[(metric, published, measured or None, measured - published or None)] in published order."""
    rows = []
    for metric, value in published.items():
        got = measured.get(metric)
        rows.append((metric, float(value), got, None if got is None else got - float(value)))
    return rows
