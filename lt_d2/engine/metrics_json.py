# Copyright (c) lt_d2 contributors.
"""``metrics.json`` as strict JSON lines.

detectron2's evaluators report undefined metrics as NaN (COCOEvaluator and lt_d2's LVIS
evaluator with no detection, a frequency group without ground truth), and its ``JSONWriter``
writes them with ``json.dumps`` as the bare token ``NaN``, which strict JSON readers (``jq``,
JavaScript, ``json.loads(..., parse_constant=...)``) reject. lt_d2 writes them as ``null``, as its
long-tail and Fixed AP reports do: the key stays (the metric was evaluated, it is undefined) and
lt_d2's readers (``lt_d2.reproduce.pipeline.measured_metrics``) skip non-numbers.
"""
import json
import math
import os


def finite_or_none(value):
    """``value`` with every non-finite float (NaN, +-inf) inside dicts and lists made None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def strict_json_line(record):
    """One ``metrics.json`` line (sorted keys, as detectron2 writes them) without NaN / inf."""
    return json.dumps(finite_or_none(record), sort_keys=True, allow_nan=False) + "\n"


class _StrictJSONLines:
    """A text file wrapper that rewrites each json line written to it with
    :func:`strict_json_line`; every other attribute is the file's."""

    def __init__(self, file):
        self._file = file

    def write(self, text):
        lines = text.split("\n")
        # each complete line is one json object (detectron2 writes whole lines)
        out = [strict_json_line(json.loads(line))[:-1] if line.strip() else line
               for line in lines]
        return self._file.write("\n".join(out))

    def __getattr__(self, name):
        return getattr(self._file, name)


def make_strict(json_writer):
    """Make a detectron2 ``JSONWriter`` write NaN / inf metrics as null (in place; returns it)."""
    if not isinstance(json_writer._file_handle, _StrictJSONLines):
        json_writer._file_handle = _StrictJSONLines(json_writer._file_handle)
    return json_writer


def write_eval_metrics(output_dir, results, calibration=None):
    """Append evaluation results to ``output_dir/metrics.json`` as one line of flattened keys
    ("multilabel/mAP", "bbox/APr", ...), the format of the metrics training writes there;
    undefined (NaN) metrics are written as null (strict JSON). ``calibration``: the score
    calibration the results were made with (a dict, written under "calibration"), if any."""
    from detectron2.evaluation.testing import flatten_results_dict
    from detectron2.utils.file_io import PathManager

    flat = {k: float(v) for k, v in flatten_results_dict(results).items()}
    if not flat or not output_dir:
        return
    PathManager.mkdirs(output_dir)
    with PathManager.open(os.path.join(output_dir, "metrics.json"), "a") as f:
        extra = {"calibration": calibration} if calibration else {}
        f.write(strict_json_line({"eval_only": True, **extra, **flat}))
