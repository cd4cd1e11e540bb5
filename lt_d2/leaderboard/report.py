# Copyright (c) lt_d2 contributors.
"""The leaderboard table: mean and standard deviation over seeds of each method's AP, APr, APc,
APf and training time, as markdown, csv and a grouped bar chart."""
import csv
import io

import numpy as np

from ..file_io import atomic_write
from .methods import METRICS

COLUMNS = tuple(m.split("/")[1] for m in METRICS)  # AP, APr, APc, APf


def summarize_runs(method, outcomes):
    """One row: ``{"method", "kind", "seeds", "<metric>": (mean, std), "train_min": mean}`` over
    the seeds that finished (``outcomes``: one dict per seed, None for a seed not run yet)."""
    done = [o for o in outcomes if o is not None]
    row = {"method": method.name, "kind": method.kind, "description": method.description,
           "seeds": len(done), "of_seeds": len(outcomes)}
    for metric, column in zip(METRICS, COLUMNS):
        values = np.array([o["metrics"][metric] for o in done], np.float64)
        row[column] = ((float(values.mean()), float(values.std(ddof=1)) if len(values) > 1
                        else 0.0) if len(values) else None)
    for key, column in (("train_seconds", "train_min"), ("train_cpu_seconds", "cpu_min")):
        seconds = [o[key] for o in done if o.get(key) is not None]
        row[column] = float(np.mean(seconds)) / 60 if seconds else None
    return row


def _minutes(value):
    return "-" if value is None else f"{value:.1f}"


def _cell(value, with_std):
    if value is None:
        return "-"
    mean, std = value
    return f"{mean:.1f} ± {std:.1f}" if with_std else f"{mean:.1f}"


def markdown_table(rows):
    """Rows in the given order; ± std shown when some method has more than one seed."""
    with_std = any(r["seeds"] > 1 for r in rows)
    lines = ["| method | kind | " + " | ".join(COLUMNS) + " | train min | CPU min | seeds |",
             "|---|---|" + "---:|" * len(COLUMNS) + "---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['kind']} | "
                     + " | ".join(_cell(r[c], with_std) for c in COLUMNS)
                     + f" | {_minutes(r['train_min'])} | {_minutes(r['cpu_min'])}"
                     f" | {r['seeds']}/{r['of_seeds']} |")
    return "\n".join(lines) + "\n"


def csv_text(rows):
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "kind", *[f"{c}_{s}" for c in COLUMNS for s in ("mean", "std")],
                     "train_min", "cpu_min", "seeds"])
    for r in rows:
        values = [x for c in COLUMNS for x in (r[c] if r[c] is not None else ("", ""))]
        writer.writerow([r["method"], r["kind"],
                         *[f"{v:.4f}" if isinstance(v, float) else v for v in values],
                         *["" if r[k] is None else f"{r[k]:.2f}" for k in ("train_min", "cpu_min")],
                         r["seeds"]])
    return out.getvalue()


def plot(rows, path, title):
    """Grouped bars: per method AP / APr / APc / APf, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["AP"] is not None]
    x = np.arange(len(rows))
    width = 0.8 / len(COLUMNS)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(rows) + 2), 4.2))
    for k, column in enumerate(COLUMNS):
        means = [r[column][0] for r in rows]
        stds = [r[column][1] for r in rows]
        ax.bar(x + (k - (len(COLUMNS) - 1) / 2) * width, means, width, yerr=stds, capsize=2,
               label=column)
    ax.set_xticks(x, [r["method"] for r in rows], rotation=45, ha="right")
    ax.set_ylabel("box AP (%)")
    ax.set_title(title)
    top = max(r[c][0] + r[c][1] for r in rows for c in COLUMNS)
    ax.set_ylim(0, top * 1.18)  # room for the legend above the bars
    ax.legend(ncol=len(COLUMNS), fontsize="small", loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def title(rows):
    seeds = max((r["seeds"] for r in rows), default=0)
    return f"lt_d2 methods on the synthetic long-tailed set ({seeds} seed{'s' * (seeds != 1)})"
