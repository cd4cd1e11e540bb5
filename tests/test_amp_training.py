# Copyright (c) lt_d2 contributors.
"""``SOLVER.AMP.ENABLED True`` on the CPU: the synthetic configs train under bfloat16 autocast
(detectron2's AMPTrainer is CUDA-only), with losses and loss state in float32."""
import copy
import math
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from lt_d2.config import add_lt_config
from lt_d2.engine import LTTrainer
from lt_d2.engine.amp import CPUAMPTrainer

from .conftest import REPO, tiny_opts

CONFIGS = {
    "ce": "configs/Synthetic-LT/faster_rcnn_tiny_ce.yaml",
    "eqlv2": "configs/Synthetic-LT/faster_rcnn_tiny_eqlv2.yaml",
    "acsl": "configs/Synthetic-LT/faster_rcnn_tiny_acsl.yaml",
    "seesaw": "configs/Synthetic-LT/faster_rcnn_tiny_seesaw.yaml",
    "bags": "configs/Synthetic-LT/decoupled/bags_faster_rcnn_tiny.yaml",
    "bacl_fcbl_hallucination":
        "configs/Synthetic-LT/decoupled/bacl_classifier_faster_rcnn_tiny.yaml",
}
# state the loss (or the hallucinator) must have accumulated after training
STATE = {
    "eqlv2": ["roi_heads.box_predictor.cls_loss.pos_grad"],
    "seesaw": ["roi_heads.box_predictor.cls_loss.cum_samples"],
    "bacl_fcbl_hallucination": ["roi_heads.box_predictor.cls_loss.num_gt",
                                "roi_heads.box_hallucinator.feature_used"],
}


@pytest.fixture(scope="module")
def train_set(tiny_root):
    """The tiny synthetic training set under a name of its own (the built-in name points at
    $DETECTRON2_DATASETS as it was when lt_d2 was imported)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from lt_d2.data.datasets import register_lt_dataset

    name, base = "amp_tiny_synthetic_train", os.path.join(str(tiny_root), "lt_synthetic")
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_lt_dataset(name, os.path.join(base, "annotations", "lt_synthetic_train.json"), base,
                        evaluator_type="lvis")
    return name


def _cfg(config, out, train_set, *opts):
    cfg = add_lt_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, config))
    cfg.merge_from_list([*tiny_opts(), "OUTPUT_DIR", str(out), "DATASETS.TEST", "()",
                         "DATASETS.TRAIN", f"('{train_set}',)", "SOLVER.CHECKPOINT_PERIOD",
                         "1000", *opts])
    if cfg.MODEL.LT.TRAINABLE:  # stage two: a stage-one-shaped checkpoint to start from
        seed_all_rng(0)
        weights = os.path.join(str(out), "stage_one.pth")
        os.makedirs(str(out), exist_ok=True)
        torch.save({"model": LTTrainer.build_model(cfg).state_dict()}, weights)
        cfg.MODEL.WEIGHTS = weights
    return cfg


def _losses(model, data, autocast):
    """One training forward's losses (float) and the classifier's logits dtype."""
    dtypes = []
    hook = model.roi_heads.box_predictor.cls_score.register_forward_hook(
        lambda m, i, o: dtypes.append(o.dtype))
    torch.manual_seed(0)
    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        losses = model(data)
    hook.remove()
    return {k: float(v) for k, v in losses.items()}, dtypes[0]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_amp_trains_on_the_cpu_with_float32_loss_state(name, train_set, tmp_path):
    cfg = _cfg(CONFIGS[name], tmp_path, train_set,
               "SOLVER.MAX_ITER", "3", "SOLVER.AMP.ENABLED", "True")
    seed_all_rng(0)
    trainer = LTTrainer(cfg)
    assert isinstance(trainer._trainer, CPUAMPTrainer)
    trainer.resume_or_load(resume=False)
    model = trainer.model

    # one forward in float32 and under autocast from the same state: the losses agree within
    # bfloat16's precision (a few roundings of 2^-8 through the network)
    data = next(iter(LTTrainer.build_train_loader(cfg)))
    state = copy.deepcopy(model.state_dict())
    full, full_dtype = _losses(model, data, autocast=False)
    model.load_state_dict(state)
    mixed, mixed_dtype = _losses(model, data, autocast=True)
    model.load_state_dict(state)
    assert full_dtype == torch.float32 and mixed_dtype == torch.bfloat16
    assert full.keys() == mixed.keys()
    for key in full:
        assert math.isclose(mixed[key], full[key], rel_tol=0.05, abs_tol=0.02), (key, mixed, full)

    trainer.train()
    history = trainer.storage.history("total_loss").values()
    assert len(history) == 3 and all(math.isfinite(v) for v, _ in history)
    saved = torch.load(tmp_path / "model_final.pth", map_location="cpu")["model"]
    for key, value in model.state_dict().items():
        if "cls_loss" in key or "box_hallucinator" in key:
            # BAGS' layout (each class's group) is an index, not a float state
            expected = torch.long if key.endswith("cls_loss.class_group") else torch.float32
            assert value.dtype == expected and saved[key].dtype == expected, key
    for key in STATE.get(name, []):
        assert saved[key].sum() > 0, key


def test_amp_on_cuda_keeps_detectron2s_trainer():
    from detectron2.engine import AMPTrainer

    from lt_d2.engine.amp import CPUAutocastStep, use_cpu_amp

    class Fake(AMPTrainer):
        def __init__(self):  # no model needed to pick the step
            pass

    assert type(use_cpu_amp(Fake(), "cuda:0")) is Fake
    cpu = use_cpu_amp(Fake(), "cpu")  # a subclass keeps its own methods, gets the CPU step
    assert isinstance(cpu, Fake) and isinstance(cpu, CPUAutocastStep)
    assert type(cpu).run_step is CPUAutocastStep.run_step
    plain = AMPTrainer.__new__(AMPTrainer)
    assert type(use_cpu_amp(plain, "cpu")) is CPUAMPTrainer
