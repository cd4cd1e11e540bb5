#!/usr/bin/env python
# Copyright (c) lt_d2 contributors.
"""Reproduce a published result: run its whole pipeline, then compare with the paper.

    python tools/reproduce.py --list [--markdown]
    python tools/reproduce.py <id> [--num-gpus 8] [--output-dir DIR] [--dry-run] [--step K]
        [--overwrite] [--results FILE] [KEY VALUE ...]

Every stage of the result's pipeline (configs/paper_results.yaml) runs in turn, with the
checkpoint surgery between stages and each stage's MODEL.WEIGHTS wired to the previous output.
Finished stages are reused, interrupted ones resume; --overwrite retrains. Trailing KEY VALUE
pairs go to every stage (they change the recipe: the table says so). The table of published
and measured numbers is printed and written to DIR/results/<id>.json.
"""
import argparse
import os
import sys

from lt_d2.file_io import write_json_atomic
from lt_d2.reproduce import (
    DEFAULT_RESULTS,
    PaperResultsError,
    comparison_rows,
    load_paper_results,
    measured_metrics,
    plan_pipeline,
    run_pipeline,
)
from lt_d2.reproduce.pipeline import check_datasets, check_inputs


def print_list(results):
    rows = [("id", "main metric", "published", "pipeline")]
    for r in results.values():
        configs = " -> ".join(s.config if s.kind == "train" else f"[{s.method}]"
                              for s in r.pipeline)
        rows.append((r.id, r.main_metric, f"{r.published[r.main_metric]:g}", configs))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])


def markdown_table(results):
    """The README's table of published results (kept equal to it by the tests)."""
    lines = ["| id | published | pipeline | status |", "|---|---|---|---|"]
    for r in results.values():
        steps = " → ".join(f"`{s.config[len('configs/'):]}`" if s.kind == "train"
                           else s.method + (" (model zoo)" if s.input else "")
                           for s in r.pipeline)
        lines.append(f"| `{r.id}` | {r.main_metric} {r.published[r.main_metric]:g} | {steps} | "
                     "recipe-matched, not yet run |")
    return "\n".join(lines)


def format_table(rows):
    lines = [f"{'metric':<22}{'published':>10}{'measured':>10}{'diff':>8}"]
    for metric, pub, got, diff in rows:
        measured = f"{'-':>10}{'-':>8}" if got is None else f"{got:>10.2f}{diff:>+8.2f}"
        lines.append(f"{metric:<22}{pub:>10.2f}{measured}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("id", nargs="?", help="result id (see --list)")
    parser.add_argument("opts", nargs="*", help="KEY VALUE config overrides for every stage")
    parser.add_argument("--list", action="store_true", help="print every id and exit")
    parser.add_argument("--markdown", action="store_true", help="with --list: the README table")
    parser.add_argument("--results", default=DEFAULT_RESULTS, help="results file")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per stage")
    parser.add_argument("--output-dir", default="output/reproduce", help="where stages write")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--step", type=int, help="run only this pipeline step")
    parser.add_argument("--overwrite", action="store_true", help="retrain finished stages")
    args = parser.parse_intermixed_args(argv)
    try:
        results = load_paper_results(args.results)
        if args.list:
            print(markdown_table(results)) if args.markdown else print_list(results)
            return 0
        if args.id not in results:
            raise PaperResultsError(f"Unknown id {args.id!r}. Valid ids: {', '.join(results)}"
                                    " (python tools/reproduce.py --list).")
        if len(args.opts) % 2:
            raise PaperResultsError(f"Overrides come in KEY VALUE pairs, got {args.opts}.")
        result = results[args.id]
        actions = plan_pipeline(result, args.output_dir, num_gpus=args.num_gpus, opts=args.opts,
                                overwrite=args.overwrite)
        selected = [a for a in actions if args.step is None or a.step == args.step]
        if not selected:
            raise PaperResultsError(
                f"--step {args.step}: {args.id} has steps 1..{actions[-1].step}.")
        print(f"{result.id}: {result.paper}\nmeasured on {result.dataset}; output in "
              f"{os.path.abspath(args.output_dir)}")
        if args.dry_run:
            for a in selected:
                state = "done, skipped" if a.done else ("only if training did not evaluate"
                                                        if a.kind == "evaluate" else "to run")
                print(f"# step {a.step}: {a.describe} ({state})\n{a.command()}")
            return 0
        check_inputs(actions, selected)
        check_datasets(selected, args.opts)
        run_pipeline(selected, overwrite=args.overwrite)
    except PaperResultsError as e:
        sys.exit(f"reproduce.py: error: {e}")
    if selected[-1].kind != "evaluate":
        return 0
    measured = measured_metrics(actions[-1].output, result.published)
    rows = comparison_rows(result.published, measured)
    print(f"\n{result.id} on {result.dataset}" + (f" (with overrides {' '.join(args.opts)})"
                                                  if args.opts else "") + ":")
    print(format_table(rows))
    out = os.path.join(args.output_dir, "results", f"{result.id}.json")
    write_json_atomic({
        "id": result.id, "paper": result.paper, "dataset": result.dataset,
        "published": result.published, "measured": measured, "overrides": args.opts,
        "rows": [dict(zip(("metric", "published", "measured", "diff"), r)) for r in rows],
        "commands": [a.command() for a in actions],
    }, out, indent=1)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
