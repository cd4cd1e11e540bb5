# Copyright (c) lt_d2 contributors.
"""Published results of the seed projects (``configs/paper_results.yaml``) and the pipelines that
reproduce them: every training stage, the checkpoint surgery between them, then the published
numbers beside the measured ones. ``tools/reproduce.py`` is the command line over it."""
from .pipeline import Action, comparison_rows, measured_metrics, plan_pipeline, run_pipeline
from .results import (
    DEFAULT_RESULTS,
    PaperResult,
    PaperResultsError,
    Step,
    load_paper_results,
    recipe_mismatches,
    resolve_config,
)

__all__ = [
    "Action", "DEFAULT_RESULTS", "PaperResult", "PaperResultsError", "Step", "comparison_rows",
    "load_paper_results", "measured_metrics", "plan_pipeline", "recipe_mismatches",
    "resolve_config", "run_pipeline",
]
