#!/usr/bin/env python
# Copyright (c) lt_d2 contributors.
"""Prepare a stage-one checkpoint for decoupled stage-two training.

    python tools/ckpt_surgery.py --ckpt-path stage1/model_final.pth --method remove|reset \
        [--out stage1/model_reset_remove.pth] [--num-classes N] [--overwrite]

remove: drop the classifier so stage two re-initialises it (cRT, BAGS).
reset: keep all weights (LWS, ACSL tune-fc, BACL start from the trained classifier).
Both drop optimizer, scheduler, iteration and loss statistics. The output is written atomically
(default: model_reset_<method>.pth beside the input); the input is never replaced unless
--overwrite is given with --out equal to it.

The input may also be a detectron2 model-zoo .pkl or a URL detectron2's PathManager fetches (then
--out is required), e.g. a COCO detector as an LVIS stage-one init:

    python tools/ckpt_surgery.py --method remove --num-classes 1230 --out coco_r50_init.pth \
        --ckpt-path \
        detectron2://COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl
"""
import argparse
import os
import sys

from lt_d2.checkpoint import (
    SurgeryError,
    checkpoint_surgery,
    default_output_path,
    load_checkpoint,
    save_checkpoint,
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--ckpt-path", required=True,
                        help="stage-one checkpoint: .pth, model-zoo .pkl, or a URL (detectron2://, "
                             "https://)")
    parser.add_argument("--method", required=True, choices=["remove", "reset"])
    parser.add_argument("--out", help="output path (default: model_reset_<method>.pth beside a "
                                      "local input; required for a URL)")
    parser.add_argument("--num-classes", type=int, help="stage two's number of classes, if new")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    try:
        out = args.out or default_output_path(args.ckpt_path, args.method)
        if os.path.abspath(out) == os.path.abspath(args.ckpt_path) and not args.overwrite:
            raise SurgeryError("--out is the input checkpoint; pass --overwrite to replace it.")
        ckpt, report = checkpoint_surgery(load_checkpoint(args.ckpt_path), args.method,
                                          args.num_classes)
        save_checkpoint(ckpt, out, overwrite=args.overwrite)
    except SurgeryError as e:
        sys.exit(f"ckpt_surgery.py: error: {e}")
    print(f"method: {args.method}")
    print(f"removed {len(report['removed'])} tensors: {', '.join(report['removed']) or '-'}")
    print(f"kept {report['kept']} tensors")
    print(f"dropped training state: {', '.join(report['dropped_state']) or '-'}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
