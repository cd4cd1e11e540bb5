# Copyright (c) lt_d2 contributors.
"""Every method of lt_d2 trained and scored side by side on the synthetic long-tailed set, with the
same detector and budget. ``tools/leaderboard.py`` is the command line over it."""
from .methods import METHODS, METRICS, Method, select_methods
from .report import csv_text, markdown_table, plot, summarize_runs, title
from .run import method_outcome, plan_method, run_method

__all__ = [
    "METHODS", "METRICS", "Method", "csv_text", "markdown_table", "method_outcome", "plan_method",
    "plot", "run_method", "select_methods", "summarize_runs", "title",
]
