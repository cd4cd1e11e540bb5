#!/usr/bin/env python
# Copyright (c) lt_d2 contributors.
"""Benchmark the demo: train + evaluate a config end to end and print time, speed and LVIS AP.

    python tools/benchmark_demo.py --config-file configs/Synthetic-LT/faster_rcnn_tiny_ce.yaml \
        --output-dir output/bench [KEY VALUE ...]

Prints one json line: wall-clock seconds, training images/s (batch size / median iteration
time from metrics.json) and the final bbox AP, AP50, APr, APc, APf.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


def summarize(records, ims_per_batch, wall_s):
    iter_times = [r["time"] for r in records if "time" in r and "total_loss" in r]
    final = [r for r in records if "bbox/AP" in r][-1]
    median = statistics.median(iter_times)
    return {
        "wall_s": round(wall_s, 1),
        "iterations": max(r["iteration"] for r in records if "total_loss" in r) + 1,
        "s_per_iter": round(median, 4),
        "train_images_per_s": round(ims_per_batch / median, 2),
        # undefined metrics (no detection) are null in metrics.json
        **{k.split("/")[1]: None if v is None else round(v, 2)
           for k, v in final.items() if k.startswith("bbox/")},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file",
           args.config_file, "OUTPUT_DIR", args.output_dir, *args.opts]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    with open(os.path.join(args.output_dir, "config.yaml")) as f:
        ims_per_batch = yaml.safe_load(f)["SOLVER"]["IMS_PER_BATCH"]
    print(json.dumps(summarize(read_metrics(args.output_dir), ims_per_batch, wall)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
