# Copyright (c) lt_d2 contributors.
"""Per-class AP against training frequency: the view that shows where a long-tailed detector
loses its AP.

:func:`per_class_ap` turns an LVIS precision array into one AP per class;
:func:`write_longtail_report` writes, for one task ("bbox", "segm", ...):

* ``longtail_report_<task>.csv``: class_id, name, image_count, frequency, ap (one row a class);
* ``longtail_report_<task>.json``: the same rows plus the AP of each frequency group;
* ``longtail_ap_vs_frequency_<task>.png``: AP against training image count (log scale).

AP values are written in the units they are given in (``per_class_ap`` gives 0-1; pass
``100 * per_class_ap(...)`` for detectron2's percent). :class:`LongTailReport` is the evaluator
that writes them after an LVIS evaluation.
"""
import csv
import io
import json
import logging
import math
import os

import numpy as np
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..file_io import atomic_write
from ..grouping import LVIS_FREQUENCIES, LVIS_FREQUENCY_NAMES, lvis_frequency_boundaries
from .means import mean_of_defined

logger = logging.getLogger(__name__)

GROUP_COLORS = {"r": "tab:red", "c": "tab:orange", "f": "tab:blue"}


def per_class_ap(precision):
    """AP of each class from an LVIS precision array [T, R, K, A] (IoU thresholds, recall
    thresholds, classes, area ranges), for area range 0 ("all").

    The mean over T and R of the entries > -1, as lvis-api averages them; NaN for classes that
    have no ground truth (all entries -1). Returns a float64 array of shape (K,).
    """
    precision = np.asarray(precision, dtype=np.float64)
    if precision.ndim != 4:
        raise ValueError(f"precision must be [T, R, K, A], got shape {precision.shape}")
    values = precision[:, :, :, 0]
    valid = values > -1
    count = valid.sum(axis=(0, 1))
    total = np.where(valid, values, 0.0).sum(axis=(0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def group_aps(per_class, frequency):
    """{"AP": mean over classes, "APr", "APc", "APf": mean over each group}; NaN classes are
    left out, and a group without any evaluated class is NaN."""
    per_class = np.asarray(per_class, dtype=np.float64)
    frequency = np.asarray(frequency)
    result = {"AP": mean_of_defined(per_class)}
    for group in LVIS_FREQUENCIES:
        result["AP" + group] = mean_of_defined(per_class[frequency == group])
    return result


def _json_number(value):
    # strict JSON has no NaN; null keeps the file readable by any parser
    return None if value is None or math.isnan(value) else float(value)


def _rows(class_names, per_class, image_count, frequency):
    return [
        {"class_id": i, "name": str(name), "image_count": int(count), "frequency": str(freq),
         "ap": _json_number(ap)}
        for i, (name, count, freq, ap) in enumerate(
            zip(class_names, image_count, frequency, per_class))
    ]


def _write_csv(path, rows):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["class_id", "name", "image_count", "frequency",
                                              "ap"], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(dict(row, ap="nan" if row["ap"] is None else repr(row["ap"])))
    atomic_write(path, lambda f: f.write(text.getvalue().encode("utf-8")))


def _plot(path, task, per_class, image_count, frequency, groups):
    # the object-oriented API with an explicit Agg canvas: no pyplot global state, no backend
    # switch that could disturb a caller that uses another backend
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    evaluated = ~np.isnan(per_class)
    # a log axis cannot show 0 training images (a class seen only at test time); put them at 0.5
    x = np.maximum(image_count.astype(np.float64), 0.5)
    for group in LVIS_FREQUENCIES:
        mask = evaluated & (frequency == group)
        label = (f"{LVIS_FREQUENCY_NAMES[group]} ({int(mask.sum())} classes): "
                 f"mean AP {groups['AP' + group]:.3g}")
        ax.scatter(x[mask], per_class[mask], s=10, alpha=0.7, color=GROUP_COLORS[group],
                   label=label, edgecolors="none")
    for boundary in lvis_frequency_boundaries():
        ax.axvline(boundary, color="gray", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class")
    ax.set_ylabel("AP")
    ax.set_title(f"{task}: per-class AP vs. training frequency (mean AP {groups['AP']:.3g})")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))


def write_longtail_report(output_dir, task, class_names, per_class_ap, image_count, frequency):
    """Write the CSV, JSON and PNG reports of ``task`` into ``output_dir``.

    All per-class inputs are indexed by contiguous class id (the order of ``thing_classes``,
    which for LVIS-format data is the order of sorted category ids, as in the precision array):
    ``per_class_ap`` (K,) with NaN for classes without ground truth; ``image_count`` (K,)
    training images per class; ``frequency`` (K,) "r"/"c"/"f" (e.g. from
    :func:`lt_d2.data.get_class_stats`). Returns :func:`group_aps`'s dict.
    """
    per_class = np.asarray(per_class_ap, dtype=np.float64).reshape(-1)
    image_count = np.asarray(image_count).reshape(-1)
    frequency = np.asarray(frequency).astype(str).reshape(-1)
    sizes = {len(class_names), len(per_class), len(image_count), len(frequency)}
    if len(sizes) != 1:
        raise ValueError(
            f"Per-class inputs disagree in length: {len(class_names)} names, {len(per_class)} "
            f"APs, {len(image_count)} image counts, {len(frequency)} frequencies.")
    os.makedirs(output_dir, exist_ok=True)
    groups = group_aps(per_class, frequency)
    rows = _rows(class_names, per_class, image_count, frequency)

    _write_csv(os.path.join(output_dir, f"longtail_report_{task}.csv"), rows)
    evaluated = ~np.isnan(per_class)
    members = {"AP": np.ones(len(per_class), bool)}
    members.update({"AP" + g: frequency == g for g in LVIS_FREQUENCIES})
    report = {
        "task": task,
        "groups": {
            name: {"ap": _json_number(groups[name]), "num_classes": int(mask.sum()),
                   "num_evaluated": int((mask & evaluated).sum())}
            for name, mask in members.items()
        },
        "classes": rows,
    }
    payload = json.dumps(report, indent=1).encode("utf-8")
    atomic_write(os.path.join(output_dir, f"longtail_report_{task}.json"),
                 lambda f: f.write(payload))
    _plot(os.path.join(output_dir, f"longtail_ap_vs_frequency_{task}.png"), task, per_class,
          image_count, frequency, groups)
    return groups


class LongTailReport(DatasetEvaluator):
    """Runs an LVIS evaluator, then writes the long-tail report of each of its tasks (per-class
    AP with training image counts, AP per frequency group, AP-vs-frequency plot)."""

    def __init__(self, lvis_evaluator, class_stats, output_dir):
        self._inner = lvis_evaluator
        self._stats = class_stats
        self._output_dir = output_dir

    def reset(self):
        self._inner.reset()

    def process(self, inputs, outputs):
        self._inner.process(inputs, outputs)

    def evaluate(self):
        results = self._inner.evaluate()
        if not comm.is_main_process():
            return results
        if not self._output_dir:
            logger.info("No long-tail report: the evaluator has no output directory.")
            return results
        precisions = getattr(self._inner, "_last_precision", {})
        if not results:  # (and _last_precision may be a previous evaluation's)
            logger.warning("No long-tail report: nothing was evaluated (no images were "
                           "processed, or the dataset has no ground truth).")
            return results
        for task in sorted(set(results) - set(precisions)):
            logger.warning("No long-tail report for %s: no per-class AP was computed (the model "
                           "made no detection, so every AP is undefined).", task)
        names = self._inner._metadata.get("thing_classes", None)
        for task, precision in precisions.items():
            ap = 100 * per_class_ap(precision)  # percent, as the metrics detectron2 prints
            if names is None or len(names) != len(ap) or len(self._stats.image_count) != len(ap):
                logger.warning("No long-tail report for %s: %d classes evaluated, %s named, "
                               "%d in the training statistics.", task, len(ap),
                               None if names is None else len(names), len(self._stats.image_count))
                continue
            write_longtail_report(self._output_dir, task, names, ap, self._stats.image_count,
                                  self._stats.frequency)
        return results
