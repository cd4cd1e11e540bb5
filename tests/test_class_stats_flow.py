# Copyright (c) lt_d2 contributors.
"""Class statistics flow one way into the model; evaluation needs only the checkpoint."""
import ast
import os
import pathlib

import pytest
import torch
from detectron2.config import get_cfg

from lt_d2.config import add_lt_config
from lt_d2.data.class_stats import ClassStats
from lt_d2.modeling.losses import GroupSoftmaxLoss, build_cls_loss

from .conftest import REPO, copypaste_metrics, run_train_net, tiny_opts

COUNTS = [5, 9, 10, 150, 999, 1000, 4000, 3]  # every group of (10, 100, 1000) non-empty


def _imported_modules(path, package):
    """Absolute names of the modules ``path`` (a module of ``package``) imports."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            names += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return names


def test_modeling_never_imports_the_data_layer():
    root = pathlib.Path(REPO) / "lt_d2"
    offenders = {}
    for path in (root / "modeling").rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        package = ".".join(parts if path.name == "__init__.py" else parts[:-1])
        package = package.removesuffix(".__init__")
        bad = [m for m in _imported_modules(path, package)
               if m == "lt_d2.data" or m.startswith("lt_d2.data.")]
        if bad:
            offenders[str(path.relative_to(root))] = bad
    assert offenders == {}


def test_import_check_sees_relative_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from ...data.class_stats import x\nfrom .base import y\nimport lt_d2.data\n")
    names = _imported_modules(source, "lt_d2.modeling.losses")
    assert "lt_d2.data.class_stats" in names and "lt_d2.data" in names
    assert "lt_d2.modeling.losses.base" in names


def _cfg(loss):
    cfg = add_lt_config(get_cfg())
    cfg.MODEL.LT.CLS_LOSS = loss
    cfg.DATASETS.TRAIN = ("no_such_training_set",)  # would fail if the default were read
    return cfg


def test_statistics_are_passed_in_and_read_only_when_a_loss_uses_them():
    stats = ClassStats(image_count=torch.tensor([300, 40, 5, 1]).numpy(),
                       instance_count=torch.tensor([900, 60, 9, 1]).numpy(),
                       frequency=["f", "c", "r", "r"], num_images=1000)
    calls = []

    def lazy():
        calls.append(1)
        return stats

    cfg = _cfg("EQLLoss")
    cfg.MODEL.LT.EQL.LAMBDA = 0.01
    eql = build_cls_loss(cfg, 4, class_stats=lazy)
    assert calls == [1]
    assert eql.tail_mask.tolist() == [0.0, 0.0, 1.0, 1.0]  # image_count / 1000 < 0.01
    fed = build_cls_loss(_cfg("FederatedLoss"), 4, class_stats=stats)
    assert torch.allclose(fed.class_weights, torch.tensor([300.0, 40, 5, 1]) ** 0.5)
    for name in ("SoftmaxCELoss", "EQLv2Loss", "SeesawLoss"):
        build_cls_loss(_cfg(name), 4, class_stats=lazy)
    assert calls == [1]  # losses without statistics never ask for them
    bags = build_cls_loss(_cfg("GroupSoftmaxLoss"), 4, class_stats=lambda: None)
    with pytest.raises(RuntimeError, match="per-class instance counts"):
        bags(torch.randn(2, bags.num_logits), torch.tensor([0, 4]))


def test_bags_layout_is_in_the_checkpoint():
    trained = GroupSoftmaxLoss(num_classes=8, instance_count=COUNTS)
    state = trained.state_dict()
    assert state["class_group"].tolist() == [0, 0, 1, 2, 2, 3, 3, 0]
    fresh = GroupSoftmaxLoss(num_classes=8)  # no statistics: sized from the bin split
    assert fresh.num_logits == trained.num_logits == 8 + 4 + 2
    fresh.load_state_dict(state)
    logits = torch.randn(5, trained.num_logits)
    assert torch.equal(fresh.probs(logits), trained.probs(logits))
    labels = torch.tensor([0, 3, 8, 6, 8])
    torch.manual_seed(0)
    expected = trained(logits, labels)
    torch.manual_seed(0)
    assert torch.equal(fresh(logits, labels), expected)


def test_bags_old_checkpoint_and_empty_group():
    # a checkpoint from before the layout was stored loads (strictly) when statistics exist
    with_stats = GroupSoftmaxLoss(num_classes=8, instance_count=COUNTS)
    assert with_stats.load_state_dict({}, strict=True) is not None
    assert with_stats.class_group.tolist() == [0, 0, 1, 2, 2, 3, 3, 0]
    # ... and without them the loss says what is missing
    without = GroupSoftmaxLoss(num_classes=8)
    assert without.load_state_dict({}, strict=False).missing_keys == ["class_group"]
    with pytest.raises(RuntimeError, match="class_group"):
        without.probs(torch.randn(1, without.num_logits))
    # an empty group (no class >= 1000 instances) cannot be sized without statistics
    sparse = GroupSoftmaxLoss(num_classes=3, instance_count=[5, 50, 500])
    with pytest.raises(RuntimeError, match="BIN_SPLIT.*DATASETS.TRAIN"):
        GroupSoftmaxLoss(num_classes=3).load_state_dict(sparse.state_dict())


# ---- --eval-only with the training json absent ------------------------------------------------

EVAL_CASES = {
    "bags": ("configs/Synthetic-LT/decoupled/bags_faster_rcnn_tiny.yaml",
             # the tiny set has no class with 1000 instances: all groups of [10, 100] are used
             ["MODEL.WEIGHTS", "", "MODEL.LT.TRAINABLE", "[]",
              "MODEL.LT.BAGS.BIN_SPLIT", "[10, 100]"]),
    "eql": ("configs/Synthetic-LT/faster_rcnn_tiny_eql.yaml", []),
    "fed": ("configs/Synthetic-LT/faster_rcnn_tiny_fed.yaml",
            ["MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES", "6"]),
}


def _root_without_train_json(tiny_root, tmp_path):
    """A $DETECTRON2_DATASETS with the tiny set's images and its val json only."""
    src, dst = pathlib.Path(tiny_root) / "lt_synthetic", tmp_path / "datasets" / "lt_synthetic"
    (dst / "annotations").mkdir(parents=True)
    for entry in src.iterdir():
        if entry.name != "annotations":
            os.symlink(entry, dst / entry.name)
    os.symlink(src / "annotations" / "lt_synthetic_val.json",
               dst / "annotations" / "lt_synthetic_val.json")
    return dst.parent


@pytest.mark.parametrize("case", sorted(EVAL_CASES))
def test_eval_only_needs_no_training_json(tiny_root, tmp_path, case):
    config, opts = EVAL_CASES[case]
    opts = [*tiny_opts(), *opts]
    train = run_train_net(["--config-file", config, "OUTPUT_DIR", str(tmp_path / "train"),
                           "SOLVER.MAX_ITER", "4", *opts], tiny_root)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-6000:]
    expected = copypaste_metrics(train.stdout + train.stderr)
    assert "APr" in expected["bbox"]

    root = _root_without_train_json(tiny_root, tmp_path)
    proc = run_train_net(["--config-file", config, "--eval-only", "OUTPUT_DIR",
                          str(tmp_path / "eval"), *opts,
                          "MODEL.WEIGHTS", str(tmp_path / "train" / "model_final.pth")], root)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-8000:]
    assert "Class statistics of DATASETS.TRAIN unavailable" in log  # the json was absent
    assert copypaste_metrics(log) == expected
