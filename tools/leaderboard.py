#!/usr/bin/env python
# Copyright (c) lt_d2 contributors.
"""Train and score every lt_d2 method on the synthetic long-tailed set, side by side.

    python tools/leaderboard.py [--seeds 0 1 2] [--methods softmax_ce crt ...]
        [--output-dir output/leaderboard] [--num-gpus N] [--dry-run] [--report-only] [--list]
        [KEY VALUE ...]

Same detector and budget for every method (configs/Synthetic-LT/); decoupled methods start from
the softmax CE model of the same seed. Resumable: a finished stage or evaluation is read, not
repeated, and an interrupted one resumes. Writes leaderboard.md / .csv / .png into the output
folder (mean ± std over the seeds). Trailing KEY VALUE pairs go to every command (a smaller
budget, e.g. SOLVER.MAX_ITER 20: the table is then not comparable to the README's).
"""
import argparse
import os
import sys

from lt_d2.file_io import atomic_write
from lt_d2.leaderboard import (
    METHODS,
    csv_text,
    markdown_table,
    method_outcome,
    plan_method,
    plot,
    run_method,
    select_methods,
    summarize_runs,
    title,
)
from lt_d2.reproduce import PaperResultsError


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("opts", nargs="*", help="KEY VALUE config overrides for every command")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds")
    parser.add_argument("--methods", nargs="+", help="a subset of the methods (see --list)")
    parser.add_argument("--output-dir", default="output/leaderboard", help="where runs write")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per training")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--report-only", action="store_true",
                        help="write the table from the finished runs, train nothing")
    parser.add_argument("--list", action="store_true", help="print the methods and exit")
    args = parser.parse_intermixed_args(argv)
    if len(args.opts) % 2:
        parser.error(f"overrides come in KEY VALUE pairs, got {args.opts}")
    return args


def write_report(methods, args):
    rows = [summarize_runs(m, [method_outcome(m, s, args.output_dir, opts=args.opts,
                                              num_gpus=args.num_gpus) for s in args.seeds])
            for m in methods]
    table = markdown_table(rows)
    out = os.path.abspath(args.output_dir)
    atomic_write(os.path.join(out, "leaderboard.md"), lambda f: f.write(table.encode()))
    atomic_write(os.path.join(out, "leaderboard.csv"), lambda f: f.write(csv_text(rows).encode()))
    if any(r["AP"] is not None for r in rows):
        plot(rows, os.path.join(out, "leaderboard.png"), title(rows))
    print(f"\n{title(rows)}" + (f" (overrides: {' '.join(args.opts)})" if args.opts else ""))
    print(table + f"written to {out}/leaderboard.{{md,csv,png}}")


def main(argv=None):
    args = parse_args(argv)
    try:
        methods = select_methods(args.methods)
    except ValueError as e:
        sys.exit(f"leaderboard.py: error: {e}")
    if args.list:
        for m in METHODS.values():
            print(f"{m.name:<20}{m.kind:<12}{m.description}")
        return 0
    try:
        for seed in args.seeds:
            for m in methods:
                if args.dry_run:
                    for a in plan_method(m, seed, args.output_dir, opts=args.opts,
                                         num_gpus=args.num_gpus):
                        print(f"# seed {seed}, {m.name}: {a.describe}"
                              f"{' (done, skipped)' if a.done else ''}\n{a.command()}")
                elif not args.report_only:
                    print(f"== seed {seed}: {m.name} ({m.description})", flush=True)
                    run_method(m, seed, args.output_dir, opts=args.opts, num_gpus=args.num_gpus)
    except PaperResultsError as e:
        sys.exit(f"leaderboard.py: error: {e}")
    if not args.dry_run:
        write_report(methods, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
