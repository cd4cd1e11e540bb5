# Copyright (c) lt_d2 contributors.
"""Open Images Challenge 2019 detection datasets at run time: a json converted by
``tools/convert_openimages.py`` (:mod:`lt_d2.data.openimages_convert`) is an LVIS-format json
(:mod:`lt_d2.data.datasets` loads it) evaluated by the "openimages" evaluator. The built-in
splits are registered in :mod:`lt_d2.data.builtin`.
"""
from .datasets import register_lt_dataset

__all__ = ["register_openimages"]

OPENIMAGES_HINT = (
    "Convert the Open Images Challenge 2019 CSVs with `python tools/convert_openimages.py`; "
    "image_root holds <ImageID>.jpg."
)


def register_openimages(name, json_file, image_root):
    """Register a converted Open Images json under ``name`` with the "openimages" evaluator."""
    register_lt_dataset(name, json_file, image_root, evaluator_type="openimages",
                        layout_hint=OPENIMAGES_HINT)
