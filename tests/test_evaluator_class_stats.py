# Copyright (c) lt_d2 contributors.
"""Training class statistics reach the evaluators from the caller (an object, or a callable
read only by evaluators that use them), and the means over defined values keep their
conventions (NaN skipped; lvis-api's entries > -1)."""
import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog

import lt_d2  # noqa: F401  (compatibility fixes before detectron2.data)
from lt_d2.config import add_lt_config
from lt_d2.evaluation import MultiLabelEvaluator, build_lt_evaluator
from lt_d2.evaluation.means import lvis_mean, mean_of_defined


class _Stats:
    image_count = np.array([150, 30, 2])
    instance_count = np.array([400, 40, 2])


@pytest.fixture(scope="module")
def multilabel_name():
    name = "_test_evaluator_class_stats_ml"
    MetadataCatalog.get(name).set(thing_classes=["a", "b", "c"], evaluator_type="multilabel")
    return name


def test_stats_object_or_callable_reach_the_multilabel_evaluator(multilabel_name):
    cfg = add_lt_config(get_cfg())
    for class_stats in (_Stats(), lambda: _Stats()):
        evaluator = build_lt_evaluator(cfg, multilabel_name, None, class_stats=class_stats)
        assert isinstance(evaluator, MultiLabelEvaluator)
        assert evaluator._class_image_count.tolist() == [150, 30, 2]
    evaluator = build_lt_evaluator(cfg, multilabel_name, None)  # none given: overall mAP only
    assert evaluator._class_image_count is None


def test_evaluators_without_use_for_the_stats_never_read_them():
    name = "_test_evaluator_class_stats_coco"
    MetadataCatalog.get(name).set(thing_classes=["a"], evaluator_type="coco",
                                  json_file="/nonexistent/coco.json")

    def unreadable():
        raise AssertionError("the COCO evaluator read the training statistics")

    # COCOEvaluator then fails on its missing json: the statistics were not read before it
    with pytest.raises(FileNotFoundError, match="coco.json"):
        build_lt_evaluator(add_lt_config(get_cfg()), name, None, class_stats=unreadable)


def test_mean_of_defined_skips_nan():
    values = np.array([0.1, np.nan, 0.7, 0.25])
    assert mean_of_defined(values) == float(np.array([0.1, 0.7, 0.25]).mean())
    assert np.isnan(mean_of_defined(np.array([np.nan, np.nan])))
    assert np.isnan(mean_of_defined(np.zeros(0)))


def test_lvis_mean_is_lvis_api_semantics():
    rng = np.random.default_rng(0)
    s = np.where(rng.random((10, 101, 7)) < 0.3, -1.0, rng.random((10, 101, 7)))
    assert lvis_mean(s) == float(np.mean(s[s > -1]))  # bit-identical, not approximately
    assert lvis_mean(np.full((2, 3), -1.0)) == -1.0
