#!/usr/bin/env python
# Copyright (c) lt_d2 contributors.
"""Benchmark the ROI classification losses against softmax cross-entropy (CPU).

    python tools/benchmark_losses.py [--rois 1024 --classes 1203 --reps 20] [--train-iters 80]

1. forward + backward of each loss at LVIS scale (1024 RoIs, 1203 classes, 25% foreground),
   median over ``--reps`` repetitions, and its ratio to SoftmaxCELoss measured in the same run;
2. with ``--train-iters N`` (> 0), the median training-iteration time of the tiny synthetic
   detector with each loss at ``--classes`` classes (the synthetic images relabelled into a long
   tail of that many classes, so the classifier, the loss and its state have LVIS size) and its
   ratio to the CE config; BACL's stage two (FCBL + hallucination) against a CE stage two with the
   same trainable parameters. Needs the synthetic set (datasets/prepare_synthetic_lt.py).
"""
import argparse
import glob
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

import lt_d2  # noqa: F401
from lt_d2.grouping import lvis_frequency
from lt_d2.modeling.losses import CLS_LOSS_REGISTRY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lvis_like_stats(num_classes, seed=0):
    """Image counts with LVIS v1's shape: a long tail from ~1 to ~20k images."""
    rng = np.random.default_rng(seed)
    counts = np.round(np.exp(rng.uniform(0, np.log(20000), num_classes))).astype(np.int64)
    freq = lvis_frequency(counts)
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
        "DistributionBalancedLoss": {"image_count": stats["image_count"],
                                     "num_images": stats["num_images"]},
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


def lvis_scale_dataset(num_classes, out_dir, seed=0):
    """The synthetic training set relabelled into ``num_classes`` classes with a long tail (a
    class drawn per annotation with LVIS-like weights), registered as a training dataset: the
    images and boxes are the synthetic set's, the classifier, the loss and its state are at
    LVIS size. Returns the registered name."""
    from lt_d2.data.catalog import datasets_root
    from lt_d2.data.datasets import register_lt_dataset

    src = os.path.join(datasets_root(), "lt_synthetic", "annotations", "lt_synthetic_train.json")
    if not os.path.isfile(src):
        sys.exit(f"{src} does not exist: run `python datasets/prepare_synthetic_lt.py` first.")
    with open(src) as f:
        data = json.load(f)
    rng = np.random.default_rng(seed)
    weights = np.exp(rng.uniform(0, np.log(20000), num_classes))
    labels = rng.choice(num_classes, size=len(data["annotations"]), p=weights / weights.sum())
    data["categories"] = [{"id": i + 1, "name": f"class_{i}"} for i in range(num_classes)]
    for ann, label in zip(data["annotations"], labels):
        ann["category_id"] = int(label) + 1
    path = os.path.join(out_dir, f"lt_synthetic_train_{num_classes}.json")
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)
    name = f"lt_bench_train_{num_classes}"
    register_lt_dataset(name, path, os.path.join(datasets_root(), "lt_synthetic"))
    return name


def train_iteration_time(config, iters, out_dir, opts):
    """Median seconds per training iteration (warm-up excluded) of ``config`` with ``opts``,
    trained in this process; returns (seconds, path of the final checkpoint)."""
    from detectron2.config import get_cfg
    from detectron2.utils.events import EventStorage  # noqa: F401  (trainer.storage below)

    from lt_d2.config import add_lt_config
    from lt_d2.engine import LTTrainer

    cfg = add_lt_config(get_cfg())
    cfg.merge_from_file(config)
    cfg.merge_from_list(["OUTPUT_DIR", out_dir, "SOLVER.MAX_ITER", str(iters), "DATASETS.TEST",
                         "()", "SOLVER.CHECKPOINT_PERIOD", str(iters * 10), "TEST.EVAL_PERIOD",
                         "0", *opts])
    cfg.freeze()
    torch.manual_seed(0)
    trainer = LTTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    times = trainer.storage.history("time").values()
    warmup = min(10, len(times) // 2)
    return statistics.median(t for t, _ in times[warmup:]), os.path.join(out_dir, "model_final.pth")


def train_table(iters, num_classes, out_dir):
    """Training iterations at ``num_classes`` classes: every end-to-end loss against softmax CE,
    and BACL's stage two (FCBL + hallucination) against CE with the same trainable parameters."""
    from lt_d2.checkpoint import checkpoint_surgery, load_checkpoint, save_checkpoint

    name = lvis_scale_dataset(num_classes, out_dir)
    common = ["DATASETS.TRAIN", f"('{name}',)", "MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes)]
    configs = sorted(glob.glob(os.path.join(REPO, "configs/Synthetic-LT/faster_rcnn_tiny_*.yaml")))
    ce = os.path.join(REPO, "configs/Synthetic-LT/faster_rcnn_tiny_ce.yaml")
    configs.remove(ce)
    rows = []
    base, stage1 = train_iteration_time(ce, iters, os.path.join(out_dir, "ce"), common)
    rows.append(("faster_rcnn_tiny_ce", base, 1.0))
    print(f"{'config':40s} {'s/iter':>8s} {'x CE':>6s}\n{rows[0][0]:40s} {base:8.4f} {1.0:6.2f}",
          flush=True)
    for config in configs:
        label = os.path.basename(config)[:-5]
        t, _ = train_iteration_time(config, iters, os.path.join(out_dir, label), common)
        rows.append((label, t, t / base))
        print(f"{label:40s} {t:8.4f} {t / base:6.2f}", flush=True)
    ckpt, _ = checkpoint_surgery(load_checkpoint(stage1), "reset")
    weights = os.path.join(out_dir, "ce", "model_reset_reset.pth")
    save_checkpoint(ckpt, weights, overwrite=True)
    bacl = os.path.join(
        REPO, "configs/Synthetic-LT/decoupled/bacl_classifier_faster_rcnn_tiny.yaml")
    stage2 = [*common, "MODEL.WEIGHTS", weights]
    ce2, _ = train_iteration_time(bacl, iters, os.path.join(out_dir, "stage2_ce"), stage2 + [
        "MODEL.LT.CLS_LOSS", "SoftmaxCELoss", "MODEL.LT.HALLUCINATION.ENABLED", "False"])
    t, _ = train_iteration_time(bacl, iters, os.path.join(out_dir, "stage2_bacl"), stage2)
    print(f"{'stage two, CE (BACL trainable set)':40s} {ce2:8.4f} {1.0:6.2f}")
    print(f"{'stage two, FCBL + hallucination':40s} {t:8.4f} {t / ce2:6.2f}", flush=True)
    rows += [("stage2_ce", ce2, 1.0), ("stage2_bacl", t, t / ce2)]
    return rows


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
        print(f"{name:28s} {times[name] * 1e3:8.2f} {times[name] / times['SoftmaxCELoss']:6.2f}")

    if args.train_iters > 0:
        print(f"\ntraining iteration of the tiny synthetic detector at {args.classes} classes "
              f"(median of {args.train_iters} iterations, warm-up excluded):")
        train_table(args.train_iters, args.classes, args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
