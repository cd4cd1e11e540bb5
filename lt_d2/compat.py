# Copyright (c) lt_d2 contributors.
"""Run detectron2 0.6 (and main) on today's numpy, Pillow, Python and torch.

Every fix here is small, scoped to the module that needs it, and a no-op where it is not
needed (a newer detectron2 or lvis, an older library). :func:`apply_all` runs once when
``lt_d2`` is imported, before anything imports ``detectron2.data``; ``APPLIED`` records
which fixes were needed in this process.

Fixes:

* ``pil_linear``: Pillow 10 removed ``PIL.Image.LINEAR``; detectron2 0.6 uses it as a default
  argument, so ``import detectron2.data`` fails. Alias it to ``BILINEAR`` (same filter).
* ``lvis_np_float``: lvis 0.5.3's ``LVISEval.accumulate`` uses ``np.float`` (removed in
  numpy 1.24), so every LVIS evaluation fails. ``lvis.eval`` gets a numpy view with the alias.
* ``d2_np_int``: detectron2 0.6's class histogram uses ``np.int``; the error is swallowed and the
  histogram silently disappears from the logs. ``detectron2.data.build`` gets the same view.
* ``collect_env``: ``default_setup`` calls ``collect_env_info``, which needs a compiled ``_C``;
  with a pure-Python install it raises. Fall back to a short environment summary.
* ``map_dataset_sample``: Python 3.11 refuses ``random.sample`` on a set, which detectron2
  0.6's ``MapDataset`` does when a mapper drops an image. Sample from a sorted list instead.
* ``cpu_ddp``: ``create_ddp_model`` passes ``device_ids=[local_rank]``, which DDP rejects for a
  CPU model; CPU models get ``device_ids=None``.
* ``export_without_caffe2``: detectron2 0.6's ``detectron2/export/__init__.py`` imports caffe2,
  which today's torch no longer ships, so ``import detectron2.export`` (TorchScript tracing and
  scripting included) fails. Register the package without its caffe2 part, as detectron2 main
  does: ``TracingAdapter``, ``scripting_with_instances``, ``dump_torchscript_IR``.

Several training processes on a machine without CUDA: :mod:`lt_d2.engine.launch`.
``detectron2.model_zoo`` needs ``pkg_resources``: requirements.txt pins setuptools < 82.
"""
import os
import random
import re
import sys
import types

import numpy as np
import PIL.Image

APPLIED = {}

# numpy aliases removed in numpy 1.24 that detectron2 0.6 and lvis 0.5.3 still use.
_REMOVED_NUMPY_ALIASES = {"float": float, "int": int, "bool": bool, "object": object, "str": str}


class NumpyWithRemovedAliases(types.ModuleType):
    """A view of numpy that also answers the removed builtin-type aliases (``np.float``...).

    Installed as the ``np`` global of the few third-party modules that need it, so numpy
    itself stays untouched for everybody else.
    """

    def __init__(self):
        super().__init__("numpy")

    def __getattr__(self, name):
        if name in _REMOVED_NUMPY_ALIASES:
            return _REMOVED_NUMPY_ALIASES[name]
        return getattr(np, name)


def _numpy_lacks_aliases():
    return not hasattr(np, "float")


def patch_pil_linear():
    if hasattr(PIL.Image, "LINEAR"):
        return False
    PIL.Image.LINEAR = PIL.Image.BILINEAR
    return True


def patch_lvis_np_float():
    import lvis.eval

    if not _numpy_lacks_aliases() or isinstance(lvis.eval.np, NumpyWithRemovedAliases):
        return False
    if not _uses_removed_alias(lvis.eval):
        return False  # a fixed lvis release
    lvis.eval.np = NumpyWithRemovedAliases()
    return True


def patch_d2_np_int():
    import detectron2.data.build as d2_build

    if not _numpy_lacks_aliases() or isinstance(d2_build.np, NumpyWithRemovedAliases):
        return False
    if not _uses_removed_alias(d2_build):
        return False  # detectron2 main uses dtype=int
    d2_build.np = NumpyWithRemovedAliases()
    return True


def patch_collect_env():
    import detectron2.engine.defaults as d2_defaults

    try:
        from detectron2 import _C

        if hasattr(_C, "get_compiler_version"):
            return False
    except ImportError:
        pass  # no _C at all: collect_env handles that itself on main; wrap anyway
    original = d2_defaults.collect_env_info
    if getattr(original, "_lt_d2_tolerant", False):
        return False

    def collect_env_info():
        try:
            return original()
        except (AttributeError, ImportError, OSError) as e:
            import detectron2
            import torch

            return (
                f"detectron2 {detectron2.__version__} (no compiled ops: {e}) @ "
                f"{os.path.dirname(detectron2.__file__)}\nPython {sys.version.split()[0]}\n"
                f"PyTorch {torch.__version__}, CUDA available: {torch.cuda.is_available()}"
            )

    collect_env_info._lt_d2_tolerant = True
    d2_defaults.collect_env_info = collect_env_info
    return True


class _SetTolerantRandom(random.Random):
    def sample(self, population, k, **kwargs):
        if isinstance(population, (set, frozenset)):
            population = sorted(population)
        return super().sample(population, k, **kwargs)


def patch_map_dataset_sample():
    import detectron2.data.common as d2_common

    if sys.version_info < (3, 11) or isinstance(d2_common.random, types.SimpleNamespace):
        return False
    d2_common.random = types.SimpleNamespace(Random=_SetTolerantRandom)
    return True


def patch_cpu_ddp():
    import detectron2.engine.defaults as d2_defaults

    original = d2_defaults.create_ddp_model
    if getattr(original, "_lt_d2_cpu_aware", False):
        return False

    def create_ddp_model(model, **kwargs):
        param = next(model.parameters(), None)
        if "device_ids" not in kwargs and (param is None or param.device.type == "cpu"):
            kwargs["device_ids"] = None
        return original(model, **kwargs)

    create_ddp_model._lt_d2_cpu_aware = True
    create_ddp_model.__doc__ = original.__doc__
    d2_defaults.create_ddp_model = create_ddp_model
    return True


def patch_export_without_caffe2():
    import importlib.util

    if "detectron2.export" in sys.modules:
        return False
    spec = importlib.util.find_spec("detectron2.export")
    if spec is None or importlib.util.find_spec("caffe2") is not None:
        return False
    with open(spec.origin, encoding="utf-8") as f:
        init_source = f.read()
    if "except ImportError" in init_source:  # detectron2 main: caffe2 is optional there
        return False
    package = importlib.util.module_from_spec(spec)  # the package, without running __init__
    sys.modules["detectron2.export"] = package
    from detectron2.export.flatten import TracingAdapter
    from detectron2.export.torchscript import dump_torchscript_IR, scripting_with_instances

    package.TracingAdapter = TracingAdapter
    package.dump_torchscript_IR = dump_torchscript_IR
    package.scripting_with_instances = scripting_with_instances
    package.__all__ = ["TracingAdapter", "dump_torchscript_IR", "scripting_with_instances"]
    return True


def _uses_removed_alias(module):
    with open(module.__file__, encoding="utf-8") as f:
        source = f.read()
    return re.search(r"\bnp\.(%s)\b(?!\d)" % "|".join(_REMOVED_NUMPY_ALIASES), source) is not None


_PATCHES = {
    "pil_linear": patch_pil_linear,
    "lvis_np_float": patch_lvis_np_float,
    "d2_np_int": patch_d2_np_int,
    "collect_env": patch_collect_env,
    "map_dataset_sample": patch_map_dataset_sample,
    "cpu_ddp": patch_cpu_ddp,
    "export_without_caffe2": patch_export_without_caffe2,
}


def apply_all():
    """Apply every fix that this environment needs; safe to call more than once."""
    for name, patch in _PATCHES.items():
        if patch():
            APPLIED[name] = True
        APPLIED.setdefault(name, False)
    return dict(APPLIED)
