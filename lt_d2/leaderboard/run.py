# Copyright (c) lt_d2 contributors.
"""Train and score the leaderboard's methods, one seed at a time, through the reproduce pipeline:
each step is a command of lt_d2's tools, stages are shared (every decoupled method starts from the
one softmax CE stage one of its seed) and a finished stage is read, not repeated.

Layout under the output folder: ``seed<k>/<config path>/`` for each training stage (as
``tools/reproduce.py``), ``seed<k>/posthoc/<method>/`` for the evaluation of a post-hoc method,
and ``train_seconds.json`` in each stage folder: the wall time of the command that trained it.
"""
import json
import os
import resource
import subprocess
import sys
import time

from ..file_io import write_json_atomic
from ..reproduce import Action, PaperResult, measured_metrics, plan_pipeline, run_pipeline
from ..reproduce.pipeline import check_datasets, check_inputs
from .methods import METRICS

TIME_RECORD = "train_seconds.json"


def seed_dir(output_dir, seed):
    return os.path.join(os.path.abspath(output_dir), f"seed{seed}")


def _as_result(method):
    return PaperResult(id=method.name, paper=method.description, dataset="lt_synthetic_val",
                       published={m: 0.0 for m in METRICS}, pipeline=method.pipeline)


def plan_method(method, seed, output_dir, *, opts=(), num_gpus=1, python=sys.executable):
    """The actions that train and score ``method`` with ``SEED seed``; the last one evaluates."""
    opts = [*opts, "SEED", str(seed)]
    actions = plan_pipeline(_as_result(method), seed_dir(output_dir, seed), num_gpus=num_gpus,
                            opts=opts, python=python)
    if not method.eval_opts:
        return actions
    model = actions[-1].needs
    folder = os.path.join(seed_dir(output_dir, seed), "posthoc", method.name)
    metrics_file = os.path.join(folder, "metrics.json")
    argv = actions[-1].argv[:]
    argv[argv.index("OUTPUT_DIR") + 1] = folder
    argv += list(method.eval_opts)
    evaluated = bool(measured_metrics(metrics_file, METRICS))
    return actions[:-1] + [Action(actions[-1].step, "evaluate", "evaluate " + method.name, argv,
                                  metrics_file, evaluated, needs=model,
                                  record={"metrics": list(METRICS)})]


def _output_dir_of(argv):
    return argv[argv.index("OUTPUT_DIR") + 1]


def _children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(argv, cwd=None):
    """subprocess.run that records how long a training command took in its output folder: wall
    seconds, and CPU seconds of all its threads (which a busy machine does not inflate)."""
    start, cpu_start = time.perf_counter(), _children_cpu_seconds()
    proc = subprocess.run(argv, cwd=cwd)
    if proc.returncode == 0 and "--eval-only" not in argv and "train_net.py" in argv[1]:
        write_json_atomic({"seconds": time.perf_counter() - start,
                           "cpu_seconds": _children_cpu_seconds() - cpu_start, "argv": argv},
                          os.path.join(_output_dir_of(argv), TIME_RECORD), indent=1)
    return proc


def run_method(method, seed, output_dir, *, opts=(), num_gpus=1, log=print, run=timed_run):
    """Train (what is not trained yet) and score ``method`` for one seed."""
    actions = plan_method(method, seed, output_dir, opts=opts, num_gpus=num_gpus)
    check_inputs(actions, actions)
    check_datasets(actions, [*opts, "SEED", str(seed)])
    run_pipeline(actions, log=log, run=run)
    return actions


def own_training(method, actions):
    """The training actions a method adds: all of an end-to-end method's, a decoupled method's
    stage two (its stage one is the shared softmax CE run, a row of its own), none for a
    post-hoc method."""
    trains = [a for a in actions if a.kind == "train"]
    return trains if method.kind == "end-to-end" else trains[1:]


def train_seconds(actions, key="seconds"):
    """Wall (or, with key="cpu_seconds", CPU) seconds of the training ``actions``, or None when
    one of them was trained without a time record."""
    total = 0.0
    for a in actions:
        path = os.path.join(os.path.dirname(a.output), TIME_RECORD)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            total += json.load(f)[key]
    return total


def method_outcome(method, seed, output_dir, *, opts=(), num_gpus=1):
    """``{"metrics": {...}, "train_seconds": s, "train_cpu_seconds": s}`` of a scored run (times
    None when unknown), None if it has not been scored yet."""
    actions = plan_method(method, seed, output_dir, opts=opts, num_gpus=num_gpus)
    metrics = measured_metrics(actions[-1].output, METRICS)
    if set(metrics) != set(METRICS):
        return None
    own = own_training(method, actions)
    return {"metrics": metrics, "train_seconds": train_seconds(own),
            "train_cpu_seconds": train_seconds(own, "cpu_seconds")}
