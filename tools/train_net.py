#!/usr/bin/env python
# Copyright (c) lt_d2 contributors.
"""Train or evaluate a detector with lt_d2: detectron2's tools/train_net.py with lt_d2's configs.

    python tools/train_net.py --config-file configs/... [--num-gpus N] [--resume] [--eval-only]
        [--num-machines M --machine-rank R --dist-url URL] [KEY VALUE ...]
"""
import sys

import lt_d2  # noqa: F401  compatibility fixes and registration, before detectron2

# isort: split
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, hooks
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from lt_d2.config import add_lt_config
from lt_d2.engine import LTTrainer, check_config, write_eval_metrics
from lt_d2.engine.launch import check_num_processes, launch
from lt_d2.modeling.calibration import calibration_record


def setup(args):
    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="lt_d2")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        check_config(cfg, training=False)
        model = LTTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = LTTrainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            res.update(LTTrainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, res)
            write_eval_metrics(cfg.OUTPUT_DIR, res, calibration_record(cfg))
        return res

    trainer = LTTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if cfg.TEST.AUG.ENABLED:
        trainer.register_hooks(
            [hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))]
        )
    return trainer.train()


def invoke_main():
    args = default_argument_parser().parse_args()
    try:
        check_num_processes(args.num_gpus)
    except ValueError as e:
        sys.exit(f"train_net.py: error: {e}")
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
