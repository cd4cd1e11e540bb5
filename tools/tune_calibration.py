#!/usr/bin/env python
# Copyright (c) lt_d2 contributors.
"""Choose the exponent of a post-hoc score calibration (TEST.LT.CALIBRATION) for a checkpoint.

Runs the model once over a dataset, keeps its raw per-RoI scores and boxes, then evaluates
(bbox, fast LVIS evaluation) every value of --values without running the model again, and
prints AP / APr / APc / APf per value and the best value by --metric:

    python tools/tune_calibration.py --config-file configs/Synthetic-LT/faster_rcnn_tiny_ce.yaml \\
        --method norcal [--values 0 0.2 ...] [--metric AP] [--dataset NAME] [--max-images N] \\
        MODEL.WEIGHTS output/model_final.pth [KEY VALUE ...]

Then evaluate with the chosen value: tools/train_net.py --eval-only ... TEST.LT.CALIBRATION.METHOD
norcal TEST.LT.CALIBRATION.GAMMA <best>. Tune on a held-out split (--dataset) when there is one:
a value chosen on the evaluation set itself is an optimistic estimate of its effect.
"""
import argparse
import logging
import re
import sys
import time

import lt_d2  # noqa: F401  compatibility fixes and registration, before detectron2

# isort: split
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.utils.logger import setup_logger

from lt_d2.config import add_lt_config
from lt_d2.data.dataset_stats import train_class_stats
from lt_d2.engine import LTTrainer, check_config
from lt_d2.evaluation.calibration_sweep import (
    best_row,
    cache_bytes,
    collect_raw_scores,
    format_table,
    score_predictor,
    sweep_calibration,
)
from lt_d2.modeling.calibration import EXPONENT_KEYS, check_calibration_applies, training_counts

DEFAULT_VALUES = {
    "norcal": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2],
    "logit_adjust": [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5],
}
METRICS = ("AP", "APr", "APc", "APf", "AP50", "AP75")
CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")  # MODEL.WEIGHTS, TEST.LT.X, ...


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--method", choices=sorted(DEFAULT_VALUES), default="norcal")
    parser.add_argument("--values", type=float, nargs="+",
                        help="exponents to try (NorCal gamma / logit-adjustment tau); default: "
                        "10 values from 0")
    parser.add_argument("--metric", choices=METRICS, default="AP",
                        help="the metric the best value maximises (default AP)")
    parser.add_argument("--dataset", help="dataset to tune on (default DATASETS.TEST[0])")
    parser.add_argument("--max-images", type=int, help="use the first N images only")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    argv = sys.argv[1:] if argv is None else list(argv)
    # the overrides start at the first config key, so that --values may come right before them
    first_key = next((i for i, a in enumerate(argv) if CONFIG_KEY.match(a)), len(argv))
    args = parser.parse_args(argv[:first_key])
    args.opts = args.opts + argv[first_key:]
    return args


def setup(args):
    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    count = cfg.TEST.LT.CALIBRATION.COUNT
    cfg.TEST.LT.CALIBRATION.METHOD = "none"  # the model gives raw scores; the sweep calibrates
    cfg.freeze()
    return cfg, count


def describe_split(cfg, dataset):
    if dataset in cfg.DATASETS.TEST:
        return (f"Tuning on '{dataset}', the evaluation set itself (DATASETS.TEST): the best "
                "value's numbers are optimistic. Pass --dataset <held-out split> to avoid that.")
    if dataset in cfg.DATASETS.TRAIN:
        return (f"Tuning on '{dataset}', a training set: the model has seen these images, so "
                "its scores there are more confident than on new images.")
    return f"Tuning on '{dataset}', a split held out from training and evaluation."


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="lt_d2")
    setup_logger(name="detectron2", abbrev_name="d2").setLevel(logging.WARNING)  # no model dump
    cfg, count = setup(args)
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    values = args.values if args.values is not None else DEFAULT_VALUES[args.method]
    check_config(cfg, training=False)
    model = LTTrainer.build_model(cfg)
    check_calibration_applies(args.method, score_predictor(model).cls_loss)
    counts = training_counts(
        lambda: train_class_stats(cfg, "calibration cannot be tuned."), count, args.method)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    print(describe_split(cfg, dataset))

    start = time.perf_counter()
    loader = LTTrainer.build_test_loader(cfg, dataset)
    records, params = collect_raw_scores(model, loader, args.max_images)
    print(f"Model pass: {len(records)} images in {time.perf_counter() - start:.1f} s; cached "
          f"scores and boxes: {cache_bytes(records) / 2**20:.1f} MiB (float32).")
    start = time.perf_counter()
    rows = sweep_calibration(records, params, dataset, args.method, counts, values)
    print(f"Sweep: {len(values)} values in {time.perf_counter() - start:.1f} s "
          f"({args.method}, counts per class: training {count}s; bbox).")
    print(format_table(rows, args.method))
    value, metrics = best_row(rows, args.metric)
    key = EXPONENT_KEYS[args.method]
    print(f"Best by {args.metric}: {value:g} ({args.metric} {metrics[args.metric]:.2f}). Use: "
          f"TEST.LT.CALIBRATION.METHOD {args.method} TEST.LT.CALIBRATION.{key} {float(value)}"
          f" TEST.LT.CALIBRATION.COUNT {count}")
    return rows


if __name__ == "__main__":
    try:
        main()
    except (ValueError, RuntimeError) as e:
        sys.exit(f"tune_calibration.py: error: {e}")
