# Copyright (c) lt_d2 contributors.
"""``configs/paper_results.yaml``: every published result of the seed projects, machine-readable.

One entry per result (the role of mmdetection's metafile.yml)::

    - id: eqlv2_r50_lvis_v1
      paper: "..."
      dataset: lvis_v1_val            # the registered dataset the number is measured on
      published: {segm/AP: 23.7, ...} # metric -> value as printed; the first is the main metric
      pipeline:                       # ordered steps
        - train: configs/...yaml      # weights wired to the previous step's output
        - surgery: remove             # or reset; on the previous train step's model_final.pth
          num_classes: 1230           # optional: class-specific layers dropped too
          input: detectron2://...     # optional: instead of a previous step (first step only)
      recipe:                         # what the official run did, one mapping per train step
        - {epochs: 12, train_images: 100170, images_seen: 1202040, batch: 16, base_lr: 0.02, ...}

:func:`recipe_mismatches` checks a recipe against the resolved config it claims to reproduce.
"""
import math
import os
from dataclasses import dataclass, field

import yaml

from ..modeling.losses.base import DEPRECATED_CLS_LOSS_NAMES

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_RESULTS = os.path.join(REPO, "configs", "paper_results.yaml")

ENTRY_FIELDS = ("id", "paper", "dataset", "published", "pipeline", "recipe")
SURGERY_METHODS = ("remove", "reset")


class PaperResultsError(ValueError):
    """A results file, entry or request that cannot be used (the message says how to fix it)."""


@dataclass(frozen=True)
class Step:
    """One pipeline step: ``train`` a config, or checkpoint ``surgery``."""

    kind: str  # "train" or "surgery"
    config: str = None  # train: config path relative to the repository root
    method: str = None  # surgery: "remove" or "reset"
    num_classes: int = None  # surgery: the new class count, if it changes
    input: str = None  # surgery: a checkpoint path or URL instead of the previous step's output

    def describe(self):
        if self.kind == "train":
            return f"train {self.config}"
        extra = f", {self.num_classes} classes" if self.num_classes else ""
        source = f" of {self.input}" if self.input else ""
        return f"surgery {self.method}{source}{extra}"


@dataclass(frozen=True)
class PaperResult:
    id: str
    paper: str
    dataset: str
    published: dict
    pipeline: tuple
    recipe: tuple = field(default=())

    @property
    def main_metric(self):
        return next(iter(self.published))

    @property
    def train_steps(self):
        return [s for s in self.pipeline if s.kind == "train"]


def _step(raw, where):
    if not isinstance(raw, dict) or len({"train", "surgery"} & set(raw)) != 1:
        raise PaperResultsError(f"{where}: a step is a mapping with one of 'train: <config>' or "
                                f"'surgery: remove|reset', got {raw!r}.")
    if "train" in raw:
        if set(raw) != {"train"}:
            raise PaperResultsError(f"{where}: a train step has only 'train', got {sorted(raw)}.")
        return Step("train", config=str(raw["train"]))
    unknown = set(raw) - {"surgery", "num_classes", "input"}
    if unknown or raw["surgery"] not in SURGERY_METHODS:
        raise PaperResultsError(f"{where}: surgery is 'remove' or 'reset' with optional "
                                f"'num_classes' and 'input', got {raw!r}.")
    return Step("surgery", method=raw["surgery"], num_classes=raw.get("num_classes"),
                input=raw.get("input"))


def _entry(raw, where):
    if not isinstance(raw, dict):
        raise PaperResultsError(f"{where}: an entry is a mapping with fields {ENTRY_FIELDS}.")
    missing = [f for f in ENTRY_FIELDS if f not in raw]
    unknown = sorted(set(raw) - set(ENTRY_FIELDS))
    if missing or unknown:
        raise PaperResultsError(f"{where} ({raw.get('id')}): missing fields {missing}, unknown "
                                f"fields {unknown}; an entry has exactly {ENTRY_FIELDS}.")
    where = f"{where} ({raw['id']})"
    published = raw["published"]
    if not isinstance(published, dict) or not published or not all(
            isinstance(v, (int, float)) for v in published.values()):
        raise PaperResultsError(f"{where}: 'published' maps metric names to numbers.")
    if not isinstance(raw["pipeline"], list) or not raw["pipeline"]:
        raise PaperResultsError(f"{where}: 'pipeline' is a non-empty list of steps.")
    pipeline = tuple(_step(s, f"{where} step {i}") for i, s in enumerate(raw["pipeline"], 1))
    for i, step in enumerate(pipeline):
        after_train = i > 0 and pipeline[i - 1].kind == "train"
        if step.kind == "surgery" and not step.input and not after_train:
            raise PaperResultsError(f"{where} step {i + 1}: surgery without 'input' works on the "
                                    "previous train step's model_final.pth; put a train step "
                                    "first.")
        if step.kind == "surgery" and step.input and i != 0:
            raise PaperResultsError(f"{where} step {i + 1}: only a first step takes 'input'.")
    if pipeline[-1].kind != "train":
        raise PaperResultsError(f"{where}: the last step must train (and so evaluate) a model.")
    recipe = raw["recipe"]
    num_train = sum(s.kind == "train" for s in pipeline)
    if not isinstance(recipe, list) or len(recipe) != num_train or not all(
            isinstance(r, dict) for r in recipe):
        raise PaperResultsError(f"{where}: 'recipe' is a list of {num_train} mappings, one per "
                                "train step, in order.")
    for r in recipe:
        unknown = sorted(set(r) - set(RECIPE_CHECKS) - set(RECIPE_INFO))
        if unknown:
            raise PaperResultsError(f"{where}: unknown recipe keys {unknown}; known: "
                                    f"{sorted(RECIPE_CHECKS) + sorted(RECIPE_INFO)}.")
    return PaperResult(str(raw["id"]), str(raw["paper"]), str(raw["dataset"]), dict(published),
                       pipeline, tuple(dict(r) for r in recipe))


def load_paper_results(path=DEFAULT_RESULTS):
    """``{id: PaperResult}`` of a results file, in file order; raises PaperResultsError."""
    if not os.path.isfile(path):
        raise PaperResultsError(f"Results file '{path}' does not exist.")
    with open(path) as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, list):
        raise PaperResultsError(f"'{path}' must hold a YAML list of entries.")
    results = {}
    for i, item in enumerate(raw, 1):
        entry = _entry(item, f"{os.path.basename(path)} entry {i}")
        if entry.id in results:
            raise PaperResultsError(f"{path}: id '{entry.id}' appears twice.")
        results[entry.id] = entry
    return results


def resolve_config(config_path, opts=(), repo=REPO):
    """The config a train step runs: detectron2's defaults, lt_d2's keys, the file with its
    whole ``_BASE_`` chain, then ``opts``."""
    from detectron2.config import get_cfg

    from ..config import add_lt_config

    path = config_path if os.path.isabs(config_path) else os.path.join(repo, config_path)
    if not os.path.isfile(path):
        raise PaperResultsError(f"Config '{config_path}' does not exist.")
    cfg = add_lt_config(get_cfg())
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    return cfg


def _close(a, b, rel=1e-6):
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-12)


def _schedule(recipe, cfg):
    out = []
    images = cfg.SOLVER.MAX_ITER * cfg.SOLVER.IMS_PER_BATCH
    if "images_seen" in recipe and not _close(images, recipe["images_seen"], rel=0.01):
        out.append(f"images seen: recipe {recipe['images_seen']}, config {images} "
                   f"(MAX_ITER {cfg.SOLVER.MAX_ITER} x IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH})")
    if {"epochs", "train_images", "images_seen"} <= set(recipe) and not _close(
            recipe["epochs"] * recipe["train_images"], recipe["images_seen"], rel=0.01):
        out.append(f"recipe: epochs x train_images != images_seen ({recipe['epochs']} x "
                   f"{recipe['train_images']} vs {recipe['images_seen']})")
    if "steps" in recipe:
        want = sorted(s / recipe["epochs"] for s in recipe["steps"])
        got = sorted(s / cfg.SOLVER.MAX_ITER for s in cfg.SOLVER.STEPS)
        if len(want) != len(got) or any(abs(w - g) > 0.01 for w, g in zip(want, got)):
            out.append(f"lr steps: recipe at {recipe['steps']} of {recipe['epochs']} epochs, "
                       f"config {list(cfg.SOLVER.STEPS)} of {cfg.SOLVER.MAX_ITER} iterations")
    return out


def _grad_clip(cfg):
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.get("CLIP_TYPE") == "full_model":
        return clip.CLIP_VALUE
    return None


# recipe key -> (config value getter, comparison)
RECIPE_CHECKS = {
    "images_seen": None, "epochs": None, "train_images": None, "steps": None,  # _schedule
    "batch": (lambda c: c.SOLVER.IMS_PER_BATCH, "eq"),
    "base_lr": (lambda c: c.SOLVER.BASE_LR, "close"),
    "warmup_iters": (lambda c: c.SOLVER.WARMUP_ITERS, "eq"),
    "warmup_factor": (lambda c: c.SOLVER.WARMUP_FACTOR, "close3"),
    "weight_decay": (lambda c: c.SOLVER.WEIGHT_DECAY, "close"),
    "min_size_train": (lambda c: list(c.INPUT.MIN_SIZE_TRAIN), "list"),
    "max_size_train": (lambda c: c.INPUT.MAX_SIZE_TRAIN, "eq"),
    "rpn_post_nms_topk_train": (lambda c: c.MODEL.RPN.POST_NMS_TOPK_TRAIN, "eq"),
    "grad_clip": (_grad_clip, "close"),
    "sampler": (lambda c: c.DATALOADER.SAMPLER_TRAIN, "eq"),
    "repeat_threshold": (lambda c: c.DATALOADER.REPEAT_THRESHOLD, "close"),
    "repeat_rounding": (lambda c: c.DATALOADER.LT.REPEAT_ROUNDING, "eq"),
    "cls_loss": (lambda c: c.MODEL.LT.CLS_LOSS, "loss"),
    "weights": (lambda c: c.MODEL.WEIGHTS, "eq"),
    "stage_loss_weights": (lambda c: list(c.MODEL.LT.CASCADE.STAGE_LOSS_WEIGHTS), "list"),
    "cascade_test_score": (lambda c: c.MODEL.LT.CASCADE.TEST_SCORE, "eq"),
    "scale_feature_gradient": (lambda c: c.MODEL.LT.CASCADE.SCALE_FEATURE_GRADIENT, "eq"),
    "test_score_thresh": (lambda c: c.MODEL.ROI_HEADS.SCORE_THRESH_TEST, "close"),
    "detections_per_image": (lambda c: c.TEST.DETECTIONS_PER_IMAGE, "eq"),
    "num_classes": (lambda c: _num_classes(c), "eq"),
    "norm_eval": (lambda c: c.MODEL.LT.NORM_EVAL, "eq"),
    "sync_stats": (lambda c: c.MODEL.LT.HALLUCINATION.SYNC_STATS, "eq"),
    "bags_normalize_scores": (lambda c: c.MODEL.LT.BAGS.NORMALIZE_SCORES, "eq"),
    "eql_frequency": (lambda c: c.MODEL.LT.EQL.FREQUENCY, "eq"),
    "eql_lambda": (lambda c: c.MODEL.LT.EQL.LAMBDA, "close"),
}
RECIPE_INFO = ("source", "note", "backbone")


def _num_classes(cfg):
    from ..config import model_num_classes

    return model_num_classes(cfg)[0]


def _matches(got, want, how):
    if want is None or got is None:
        return got == want
    if how == "eq":
        return got == want
    if how == "loss":  # a deprecated loss name on either side means its new one
        return DEPRECATED_CLS_LOSS_NAMES.get(got, got) == DEPRECATED_CLS_LOSS_NAMES.get(want, want)
    if how == "list":
        return len(got) == len(want) and all(_close(g, w) for g, w in zip(got, want))
    return _close(got, want, rel=1e-3 if how == "close3" else 1e-6)


def recipe_mismatches(recipe, cfg, wired_weights=False):
    """Differences between a recipe mapping and the resolved config (empty: it agrees).

    The schedule is compared in images seen (within 1 %) and lr steps as fractions of the
    schedule (within 1 % of it); the rest exactly (floats to 1e-6, the warm-up factor to 1e-3).
    ``wired_weights``: the step's MODEL.WEIGHTS comes from the previous step, not the config.
    """
    out = _schedule(recipe, cfg)
    for key, want in recipe.items():
        check = RECIPE_CHECKS.get(key)
        if check is None:
            continue
        if key == "weights" and wired_weights:
            out.append("weights: this step's weights are wired to the previous step's output; "
                       "a recipe gives 'weights' only for a pipeline's first step")
            continue
        getter, how = check
        got = getter(cfg)
        if not _matches(got, want, how):
            out.append(f"{key}: recipe {want!r}, config {got!r}")
    return out
