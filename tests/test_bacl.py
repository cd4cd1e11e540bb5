# Copyright (c) lt_d2 contributors.
"""BACL end to end on CPU: representation stage -> surgery (reset) -> classifier stage -> eval."""
import subprocess
import sys

import torch

from .conftest import REPO, copypaste_metrics, run_train_net, tiny_opts


def test_bacl_two_stages_end_to_end(tiny_root, tmp_path):
    rep, cls_ = tmp_path / "rep", tmp_path / "cls"
    base = ["SOLVER.CHECKPOINT_PERIOD", "100", *tiny_opts(), "INPUT.LT.LSJ.IMAGE_SIZE", "64"]
    proc = run_train_net(["--config-file",
                          "configs/Synthetic-LT/bacl_representation_faster_rcnn_tiny.yaml",
                          "OUTPUT_DIR", str(rep), "SOLVER.MAX_ITER", "6", "DATASETS.TEST", "()",
                          *base],
                         tiny_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    surgery = subprocess.run([sys.executable, f"{REPO}/tools/ckpt_surgery.py", "--ckpt-path",
                              str(rep / "model_final.pth"), "--method", "reset"],
                             capture_output=True)
    assert surgery.returncode == 0
    weights = rep / "model_reset_reset.pth"
    proc = run_train_net(["--config-file",
                          "configs/Synthetic-LT/decoupled/bacl_classifier_faster_rcnn_tiny.yaml",
                          "OUTPUT_DIR", str(cls_), "MODEL.WEIGHTS", str(
                              weights), "SOLVER.MAX_ITER", "6",
                          *base], tiny_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "APr" in copypaste_metrics(log)["bbox"]
    assert "roi_heads.box_predictor.cls_score.weight" in log and "proposal_generator" in log
    before = torch.load(weights)["model"]
    after = torch.load(cls_ / "model_final.pth")["model"]
    for key in before:
        if key.startswith(("backbone.", "roi_heads.box_head.")) and key in after:
            assert torch.equal(before[key], after[key]), key  # frozen
    assert not torch.equal(before["roi_heads.box_predictor.cls_score.weight"],
                           after["roi_heads.box_predictor.cls_score.weight"])
    # the hallucinator's and FCBL's statistics are checkpointed
    assert after["roi_heads.box_hallucinator.feature_used"].sum() > 0
    assert after["roi_heads.box_predictor.cls_loss.num_gt"].sum() > 0
