"""Each rule that groups classes by training frequency is defined once, in lt_d2.grouping, and
every layer (data, losses, evaluation, benchmarks) uses that definition."""
import ast
import pathlib

import numpy as np

from lt_d2 import grouping
from lt_d2.grouping import bags_bins, count_quantiles, head_medium_tail, lvis_frequency

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_lvis_frequency_boundaries():
    counts = [0, 1, 10, 11, 100, 101, 5000]
    assert lvis_frequency(counts).tolist() == ["r", "r", "r", "c", "c", "f", "f"]
    assert str(lvis_frequency(10)) == "r" and str(lvis_frequency(11)) == "c"
    lo, hi = grouping.lvis_frequency_boundaries()
    assert str(lvis_frequency(int(lo))) == "r" and str(lvis_frequency(int(lo) + 1)) == "c"
    assert str(lvis_frequency(int(hi))) == "c" and str(lvis_frequency(int(hi) + 1)) == "f"


def test_head_medium_tail_boundaries():
    split = head_medium_tail([100, 99, 20, 19, 0, 500])
    assert list(split) == list(grouping.SPLITS)
    assert split["head"].tolist() == [0, 5]
    assert split["medium"].tolist() == [1, 2]
    assert split["tail"].tolist() == [3, 4]


def test_count_quantiles():
    # 7 classes: quantiles of 2, 2, 1, 1, 1 classes in increasing count
    assert count_quantiles([5, 1, 4, 2, 3, 0, 9]).tolist() == [4, 1, 3, 2, 2, 1, 5]
    assert count_quantiles([3, 3, 3, 3, 3]).tolist() == [1, 2, 3, 4, 5]  # ties by index
    assert count_quantiles(np.arange(4), num_quantiles=2).tolist() == [1, 1, 2, 2]


def test_bags_bins():
    assert bags_bins([5, 9, 10, 150, 999, 1000, 4000, 3]) == [0, 0, 1, 2, 2, 3, 3, 0]
    assert bags_bins([5, 50], bin_split=(10,)) == [0, 1]


def test_every_layer_uses_the_one_definition():
    from lt_d2.data import class_stats, multilabel_datasets, openimages_convert, synthetic
    from lt_d2.evaluation import fixed_ap, longtail_report, multilabel
    from lt_d2.evaluation import openimages as oi_eval
    from lt_d2.modeling.losses import group_softmax

    assert class_stats.lvis_frequency is lvis_frequency
    assert multilabel_datasets.lvis_frequency is lvis_frequency
    assert synthetic.lvis_frequency is lvis_frequency
    assert openimages_convert.count_quantiles is count_quantiles is oi_eval.count_quantiles
    assert multilabel.head_medium_tail is head_medium_tail
    assert group_softmax.bags_bins is bags_bins
    assert fixed_ap.LVIS_FREQUENCIES is grouping.LVIS_FREQUENCIES
    assert longtail_report.LVIS_FREQUENCIES is grouping.LVIS_FREQUENCIES


def _constant_sequences(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List)) and node.elts and all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            yield tuple(e.value for e in node.elts)


def test_no_second_copy_of_a_rule():
    """Outside lt_d2/grouping.py no module spells a group-name list or re-implements a rule."""
    names = {grouping.LVIS_FREQUENCIES, grouping.SPLITS}
    rule_calls = {"bisect_right", "array_split"}
    rule_defs = {"lvis_frequency", "lvis_frequency_groups", "head_medium_tail", "class_split",
                 "count_quantiles", "frequency_quintiles", "bags_bins", "class_groups"}
    offenders = []
    files = [p for p in (REPO / "lt_d2").rglob("*.py") if p.name != "grouping.py"]
    files += list((REPO / "tools").glob("*.py")) + list((REPO / "datasets").glob("*.py"))
    for path in files:
        tree = ast.parse(path.read_text())
        rel = path.relative_to(REPO)
        offenders += [f"{rel}: names {seq}" for seq in _constant_sequences(tree) if seq in names]
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name in rule_defs:
                offenders.append(f"{rel}: defines {node.name}")
            if isinstance(node, ast.Attribute) and node.attr in rule_calls:
                offenders.append(f"{rel}: calls {node.attr}")
            if isinstance(node, ast.Compare) and any(
                    isinstance(c, ast.Constant) and c.value in (10, 100) for c in node.comparators):
                if any(isinstance(n, ast.Constant) and n.value in ("r", "c", "f")
                       for n in ast.walk(tree)):
                    offenders.append(f"{rel}:{node.lineno}: compares with an LVIS boundary")
    assert not offenders, "\n".join(offenders)
