#!/usr/bin/env python
# Copyright (c) lt_d2 contributors.
"""Benchmark the ROI classification losses against softmax cross-entropy (CPU).

    python tools/benchmark_losses.py [--rois 1024 --classes 1203 --reps 20] [--train-iters 80]

1. forward + backward of each loss at LVIS scale (1024 RoIs, 1203 classes, 25% foreground),
   median over ``--reps`` repetitions, and its ratio to SoftmaxCE measured in the same run;
2. with ``--train-iters N`` (> 0), the median training-iteration time of the tiny synthetic
   config with each loss (tools/train_net.py, no evaluation) and its ratio to the CE config.
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

import lt_d2  # noqa: F401
from lt_d2.modeling.losses import CLS_LOSS_REGISTRY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lvis_like_stats(num_classes, seed=0):
    """Image counts with LVIS v1's shape: a long tail from ~1 to ~20k images."""
    rng = np.random.default_rng(seed)
    counts = np.round(np.exp(rng.uniform(0, np.log(20000), num_classes))).astype(np.int64)
    freq = np.where(counts <= 10, "r", np.where(counts <= 100, "c", "f"))
    return {"image_count": counts, "instance_count": counts * 3, "num_images": 100000,
            "frequency": freq}


def build_loss(name, num_classes, stats):
    cls = CLS_LOSS_REGISTRY.get(name)
    extra = {
        "FederatedLoss": {"image_count": stats["image_count"]},
        "EQLLoss": {"image_count": stats["image_count"], "num_images": stats["num_images"],
                    "lambda_": 0.0011},
        "ACSLLoss": {"frequency": stats["frequency"]},
        "GroupSoftmaxLoss": {"instance_count": stats["instance_count"]},
        "DistributionBalancedLoss": {"class_freq": stats["image_count"],
                                     "num_samples": stats["num_images"]},
    }.get(name, {})
    return cls(num_classes=num_classes, **extra)


def time_losses(losses, rois, num_classes, reps):
    """Median forward+backward seconds of each loss; repetitions interleave the losses so
    that machine noise hits them all alike."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, num_classes, (rois,), generator=g)
    labels[torch.rand(rois, generator=g) > 0.25] = num_classes  # 25% foreground
    inputs = {name: torch.randn(rois, fn.num_logits, generator=g) for name, fn in losses.items()}
    times = {name: [] for name in losses}
    for i in range(reps + 3):
        for name, loss_fn in losses.items():
            x = inputs[name].clone().requires_grad_()
            start = time.perf_counter()
            out = loss_fn(x, labels)
            (sum(out.values()) if isinstance(out, dict) else out).backward()
            if i >= 3:  # warm-up
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def train_iteration_time(config, iters, out_dir):
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", config,
           "OUTPUT_DIR", out_dir, "SOLVER.MAX_ITER", str(iters), "DATASETS.TEST", "()",
           "SOLVER.CHECKPOINT_PERIOD", str(iters * 10)]
    subprocess.run(cmd, check=True, capture_output=True)
    with open(os.path.join(out_dir, "metrics.json")) as f:
        records = [json.loads(line) for line in f]
    # the iteration timer's median over the last 20 iterations of each logged window, warm-up skipped
    times = [r["time"] for r in records if "time" in r and r["iteration"] >= 39]
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rois", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=1203)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--train-iters", type=int, default=0)
    parser.add_argument("--output-dir", default="output/bench_losses")
    args = parser.parse_args(argv)

    stats = lvis_like_stats(args.classes)
    names = sorted(k for k, _ in CLS_LOSS_REGISTRY)
    times = time_losses({n: build_loss(n, args.classes, stats) for n in names}, args.rois,
                        args.classes, args.reps)
    print(f"forward+backward, {args.rois} RoIs x {args.classes} classes, median of {args.reps}:")
    print(f"{'loss':28s} {'ms':>8s} {'x CE':>6s}")
    for name in names:
        print(f"{name:28s} {times[name] * 1e3:8.2f} {times[name] / times['SoftmaxCE']:6.2f}")

    if args.train_iters > 0:
        print(f"\ntraining iteration of the tiny synthetic config ({args.train_iters} iterations):")
        configs = sorted(glob.glob(os.path.join(REPO, "configs/Synthetic-LT/faster_rcnn_tiny_*.yaml")))
        ce = os.path.join(REPO, "configs/Synthetic-LT/faster_rcnn_tiny_ce.yaml")
        base = train_iteration_time(ce, args.train_iters, os.path.join(args.output_dir, "ce"))
        print(f"{'config':32s} {'s/iter':>8s} {'x CE':>6s}")
        print(f"{'faster_rcnn_tiny_ce':32s} {base:8.4f} {1.0:6.2f}")
        for config in configs:
            if config == ce:
                continue
            name = os.path.basename(config)[:-5]
            t = train_iteration_time(config, args.train_iters, os.path.join(args.output_dir, name))
            print(f"{name:32s} {t:8.4f} {t / base:6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
