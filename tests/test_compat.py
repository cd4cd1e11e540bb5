# Copyright (c) lt_d2 contributors.
import random

import numpy as np
import PIL.Image
import torch

from lt_d2 import compat


def test_apply_all_is_idempotent_and_reports_every_fix():
    first = compat.apply_all()
    second = compat.apply_all()
    assert set(first) == set(compat._PATCHES)
    assert first == second


def test_pil_linear_alias_is_bilinear():
    assert PIL.Image.LINEAR == PIL.Image.BILINEAR
    import detectron2.data.transforms as T  # failed at import on Pillow >= 10

    assert T.ExtentTransform.__init__.__defaults__[0] == PIL.Image.BILINEAR


def test_numpy_view_answers_removed_aliases_and_forwards_the_rest():
    view = compat.NumpyWithRemovedAliases()
    assert view.float is float and view.int is int
    assert view.zeros is np.zeros
    assert view.array([1, 2], dtype=view.float).dtype == np.float64
    assert not hasattr(np, "float") or np.float is float  # numpy itself is untouched


def test_removed_alias_detection_ignores_sized_types(tmp_path):
    module = type("M", (), {})()
    for source, expected in [("x = np.float(1)", True), ("dtype=np.int)", True),
                             ("np.float32(1); np.int64", False), ("np.bool_", False)]:
        path = tmp_path / "m.py"
        path.write_text(source)
        module.__file__ = str(path)
        assert compat._uses_removed_alias(module) == expected, source


def test_lvis_eval_runs_on_this_numpy():
    import lvis.eval

    # lvis 0.5.3 calls np.float inside LVISEval.accumulate; it must resolve.
    assert lvis.eval.np.float is float
    assert lvis.eval.np.array([1.5]).dtype == np.float64


def test_class_histogram_is_printed(caplog):
    import logging

    from detectron2.data.build import print_instances_class_histogram

    dicts = [{"annotations": [{"category_id": 0}, {"category_id": 1}]},
             {"annotations": [{"category_id": 1, "iscrowd": 0}]}]
    with caplog.at_level(logging.INFO):
        print_instances_class_histogram(dicts, ["a", "b"])  # np.int on detectron2 0.6
    assert "Distribution of instances" in caplog.text


def test_collect_env_info_works_without_compiled_ops():
    import detectron2.engine.defaults as d2_defaults

    info = d2_defaults.collect_env_info()
    assert "PyTorch" in info or "torch" in info.lower()


def test_map_dataset_falls_back_when_the_mapper_drops_an_image():
    from detectron2.data.common import MapDataset

    dataset = MapDataset(list(range(10)), lambda x: None if x == 3 else x)
    random.seed(0)
    assert dataset[3] in set(range(10)) - {3}


def test_cpu_ddp_gets_no_device_ids(monkeypatch):
    import detectron2.engine.defaults as d2_defaults

    seen = {}

    class FakeDDP:
        def __init__(self, model, **kwargs):
            seen.update(kwargs)

    monkeypatch.setattr(d2_defaults, "DistributedDataParallel", FakeDDP)
    monkeypatch.setattr(d2_defaults.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(d2_defaults.comm, "get_local_rank", lambda: 1)
    d2_defaults.create_ddp_model(torch.nn.Linear(2, 2), broadcast_buffers=False)
    assert seen == {"device_ids": None, "broadcast_buffers": False}


def test_model_zoo_imports():
    from detectron2 import model_zoo  # needs pkg_resources: setuptools < 82 is pinned

    assert model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")


def test_launch_refuses_more_processes_than_the_machine_runs():
    import pytest

    from lt_d2.engine import launch

    too_many = launch.max_processes_per_machine() + 1
    with pytest.raises(ValueError, match=f"--num-gpus {too_many}"):
        launch.launch(lambda: None, too_many)
