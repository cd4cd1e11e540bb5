# Copyright (c) lt_d2 contributors.
"""README's "Methods at a glance" table: every registered loss is in it, every file it names
exists, every config key it names is one of lt_d2's (or detectron2's) keys; and the deprecated
loss names still build."""
import logging
import os
import re

import pytest
from detectron2.config import get_cfg

from lt_d2.config import add_lt_config
from lt_d2.modeling.hallucination import HALLUCINATOR_REGISTRY
from lt_d2.modeling.losses import CLS_LOSS_REGISTRY, DEPRECATED_CLS_LOSS_NAMES, LTClassificationLoss
from lt_d2.modeling.losses import base as losses_base
from lt_d2.modeling.losses import build_cls_loss, resolve_cls_loss_name

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)


def _method_rows():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("## Methods at a glance\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows[1:]]  # no header
    assert cells and all(len(c) == 4 for c in cells), "the map has 4 columns"
    return cells


def _code(cell):
    return re.findall(r"`([^`]+)`", cell)


def test_every_registered_loss_and_hallucinator_is_in_the_map():
    named = {name for row in _method_rows() for name in _code(row[2])}
    for registry in (CLS_LOSS_REGISTRY, HALLUCINATOR_REGISTRY):
        missing = sorted(k for k, _ in registry if k not in named)
        assert not missing, f"README's method map lacks {missing}"


def test_every_file_in_the_map_exists():
    files = [f for row in _method_rows() for f in _code(row[3])]
    assert files
    for f in files:
        assert os.path.isfile(os.path.join(ROOT, f)), f"README's method map names {f}"


def test_every_config_key_in_the_map_exists():
    cfg = get_cfg()
    add_lt_config(cfg)
    for row in _method_rows():
        for code in _code(row[1]):
            key, *value = code.split()
            node = cfg
            for part in key.split("."):
                if part.endswith("*"):  # a family of keys: some key starts so
                    assert any(k.startswith(part[:-1]) for k in node), key
                    break
                assert part in node, f"README's method map names the unknown key {key}"
                node = node[part]
            if key.endswith("CLS_LOSS"):
                assert value[0] in CLS_LOSS_REGISTRY and value[0] in row[2]


@pytest.mark.parametrize("old", sorted(DEPRECATED_CLS_LOSS_NAMES))
def test_deprecated_loss_names_build_the_renamed_loss(old, caplog, monkeypatch):
    monkeypatch.setattr(losses_base, "_deprecation_noted", set())
    new = DEPRECATED_CLS_LOSS_NAMES[old]
    assert new.endswith("Loss") and old not in CLS_LOSS_REGISTRY
    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.MODEL.LT.CLS_LOSS = old
    with caplog.at_level(logging.WARNING):
        loss = build_cls_loss(cfg, 3, class_stats=lambda: None)
    assert type(loss) is CLS_LOSS_REGISTRY.get(new)
    assert any(old in r.getMessage() and new in r.getMessage() for r in caplog.records)
    with pytest.raises(KeyError, match="Registered losses"):
        resolve_cls_loss_name("SoftmaxLoss")


def test_registered_names_end_in_loss_and_declare_bool_capabilities():
    for name, cls in CLS_LOSS_REGISTRY:
        assert name.endswith("Loss") and issubclass(cls, LTClassificationLoss)
        for flag in ("multi_label", "reports_per_class_accuracy", "scores_have_background"):
            assert isinstance(getattr(cls, flag), bool), (name, flag)
        if cls.reports_per_class_accuracy:
            assert cls.per_class_accuracy is not LTClassificationLoss.per_class_accuracy
