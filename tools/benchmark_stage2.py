#!/usr/bin/env python
# Copyright (c) lt_d2 contributors.
"""Benchmark decoupled stage two: seconds per training iteration with and without skipping
the losses of frozen heads (RPN, box regression, mask; see lt_d2.engine.freeze).

    python tools/benchmark_stage2.py
        [--config-file configs/Synthetic-LT/decoupled/crt_faster_rcnn_tiny.yaml]
        [--iters 30] [--warmup 5] [KEY VALUE ...]

Uses the synthetic set ($DETECTRON2_DATASETS/lt_synthetic; generated if absent) and, as the
stage-one weights, the config's model at random init saved as a checkpoint. Batches are read
once and reused, so the times are those of the model (forward, backward, optimizer step).
Prints one json line: s/iter before (all losses) and after (frozen heads skipped), the speed-up
and the skipped losses.
"""
import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402

import lt_d2  # noqa: F401,E402  compatibility fixes and registration, before detectron2

# isort: split
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import DefaultTrainer  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from lt_d2.config import add_lt_config  # noqa: E402
from lt_d2.engine import LTTrainer  # noqa: E402
from lt_d2.engine.freeze import freeze_all_but, skip_frozen_losses  # noqa: E402


def _ensure_dataset():
    from lt_d2.data.synthetic import generate_synthetic_lt

    root = os.environ.setdefault("DETECTRON2_DATASETS", os.path.join(REPO, "datasets"))
    if not os.path.isdir(os.path.join(root, "lt_synthetic")):
        generate_synthetic_lt(os.path.join(root, "lt_synthetic"))


def _time(model, cfg, batches, warmup):
    optimizer = LTTrainer.build_optimizer(cfg, model)
    times = []
    with EventStorage():
        for i, batch in enumerate(batches):
            start = time.perf_counter()
            losses = model(copy.deepcopy(batch))
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times), sorted(losses)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file",
                        default="configs/Synthetic-LT/decoupled/crt_faster_rcnn_tiny.yaml")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    _ensure_dataset()
    cfg = add_lt_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, args.config_file))
    cfg.merge_from_list(args.opts)
    if not cfg.MODEL.LT.TRAINABLE:
        raise ValueError(
            f"{args.config_file} is not a stage-two config (MODEL.LT.TRAINABLE is empty).")
    torch.manual_seed(0)
    stage_one = DefaultTrainer.build_model(cfg)  # random init stands in for stage-one weights
    loader = iter(LTTrainer.build_train_loader(cfg))
    batches = [next(loader) for _ in range(args.iters + args.warmup)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        DetectionCheckpointer(stage_one, save_dir=tmp).save("stage_one")
        for mode in ("before", "after"):
            model = DefaultTrainer.build_model(cfg)
            DetectionCheckpointer(model).load(os.path.join(tmp, "stage_one.pth"))
            freeze_all_but(model, list(cfg.MODEL.LT.TRAINABLE))
            skipped = skip_frozen_losses(model) if mode == "after" else []
            model.train()
            results[mode], results[f"losses_{mode}"] = _time(model, cfg, batches, args.warmup)
    print(json.dumps({
        "config": args.config_file, "iters": args.iters, "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "threads": torch.get_num_threads(),
        "s_per_iter_before": round(results["before"], 4),
        "s_per_iter_after": round(results["after"], 4),
        "speedup": round(results["before"] / results["after"], 2),
        "skipped": skipped, "losses_after": results["losses_after"],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
