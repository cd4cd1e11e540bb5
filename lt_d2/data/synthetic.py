# Copyright (c) lt_d2 contributors.
"""A synthetic long-tailed detection dataset in LVIS v1 format, deterministic from a seed.

Classes are coloured shapes (8 shapes x 6 colours = 48 classes). Training images per class fall
geometrically from ``max_images`` to ``min_images`` over the class ranks, so with the defaults
13 classes are frequent (>100 training images), 20 common (11-100) and 15 rare (<=10) by LVIS's
rule. Rare classes share their shape with frequent classes of another colour and their colour
with frequent classes of another shape, which is what makes the tail hard for a softmax
classifier. Every class appears in ``val_images_per_class`` validation images.

Annotation is exhaustive, so each image lists every absent class in ``neg_category_ids``. With
probability ``not_exhaustive_prob`` an image that holds two instances of a class keeps one of
them unlabelled and lists the class in ``not_exhaustive_category_ids``, as LVIS does.
"""
import contextlib
import json
import logging
import math
import os
import shutil
import tempfile

import cv2
import numpy as np

from ..grouping import lvis_frequency

logger = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "hexagon", "arrow")
COLORS = {  # RGB
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 80, 215),
    "yellow": (225, 205, 40),
    "magenta": (195, 50, 195),
    "cyan": (40, 195, 205),
}
COMPLETE_MARKER = ".complete"


def class_image_targets(num_classes, max_images, min_images):
    """Training images per class rank: a geometric fall from ``max_images`` to ``min_images``."""
    ranks = np.arange(num_classes)
    ratio = (min_images / max_images) ** (1.0 / max(num_classes - 1, 1))
    return np.maximum(np.round(max_images * ratio**ranks).astype(np.int64), 1)


def shape_polygon(shape, cx, cy, size, angle):
    """Vertices (N, 2) of a shape of bounding size ``size`` centred at (cx, cy), rotated."""
    r = size / 2.0
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif shape == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * r * 0.85
    elif shape == "triangle":
        t = np.deg2rad([-90, 30, 150])
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif shape == "diamond":
        pts = np.array([[0, -1], [0.6, 0], [0, 1], [-0.6, 0]], float) * r
    elif shape == "star":
        t = np.deg2rad(np.arange(10) * 36 - 90)
        rad = np.where(np.arange(10) % 2 == 0, r, r * 0.42)
        pts = np.stack([np.cos(t) * rad, np.sin(t) * rad], 1)
    elif shape == "cross":
        a, b = 1.0, 0.33
        pts = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a],
                        [-b, b], [-a, b], [-a, -b], [-b, -b]], float) * r
    elif shape == "hexagon":
        t = np.deg2rad(np.arange(6) * 60)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif shape == "arrow":
        pts = np.array([[-1, -0.3], [0.1, -0.3], [0.1, -0.8], [1, 0], [0.1, 0.8], [0.1, 0.3],
                        [-1, 0.3]], float) * r
    else:
        raise ValueError(f"Unknown shape {shape!r}; known: {SHAPES}")
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]]) + np.array([cx, cy])


def _background(rng, size):
    base = rng.uniform(70, 185)
    img = np.full((size, size, 3), base, np.float32) + rng.normal(0, 6, 3)
    for _ in range(rng.integers(2, 6)):  # grey clutter lines: structure that is not an object
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(img, tuple(int(v) for v in p1), tuple(int(v) for v in p2),
                 (float(rng.uniform(40, 220)),) * 3, int(rng.integers(1, 3)))
    return img


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def render_image(rng, classes, image_size, min_size, max_size):
    """Draw instances of ``classes`` (class indices, repeats allowed) on one image.

    Returns the RGB uint8 image and a list of (class index, polygon (N, 2)) actually drawn.
    """
    img = _background(rng, image_size)
    placed, boxes = [], []
    for cls in classes:
        shape, color = SHAPES[cls // len(COLORS)], list(COLORS.values())[cls % len(COLORS)]
        for _attempt in range(30):
            size = rng.uniform(min_size, max_size)
            cx, cy = rng.uniform(size / 2, image_size - size / 2, 2)
            poly = shape_polygon(shape, cx, cy, size, rng.uniform(-0.25, 0.25))
            box = (*poly.min(0), *poly.max(0))
            if all(_iou(box, b) < 0.15 for b in boxes):
                break
            min_size, max_size = max(8, min_size * 0.9), max(10, max_size * 0.9)
        else:
            continue  # image full; the caller checks that every class got drawn
        rgb = np.clip(np.array(color, np.float32) + rng.normal(0, 12, 3), 0, 255)
        cv2.fillPoly(img, [np.round(poly * 16).astype(np.int32)], rgb.tolist(), cv2.LINE_AA, 4)
        placed.append((cls, poly))
        boxes.append(box)
    img += rng.normal(0, 8, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), placed


def _pack_images(rng, counts, max_classes_per_image):
    """Group class occurrences into images: class c ends up in exactly counts[c] images."""
    remaining = counts.astype(np.float64).copy()
    images = []
    while remaining.sum() > 0:
        nonzero = int((remaining > 0).sum())
        k = min(int(rng.integers(1, max_classes_per_image + 1)), nonzero)
        chosen = rng.choice(len(counts), size=k, replace=False, p=remaining / remaining.sum())
        remaining[chosen] -= 1
        images.append(sorted(int(c) for c in chosen))
    return images


def _polygon_area(poly):
    x, y = poly[:, 0], poly[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def build_split(rng, split, image_lists, num_classes, image_size, out_dir, not_exhaustive_prob,
                min_size, max_size, first_ann_id=1):
    """Render a split's images into ``out_dir/split`` and return its LVIS images/annotations."""
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
    images, annotations, ann_id = [], [], first_ann_id
    for idx, classes in enumerate(image_lists):
        instances = [c for c in classes for _ in range(1 + int(rng.random() < 0.25))]
        while True:  # re-draw until every chosen class is on the image (exact image counts)
            pixels, placed = render_image(rng, instances, image_size, min_size, max_size)
            if {c for c, _ in placed} == set(classes):
                break
        image_id = idx + 1
        file_name = f"{split}/{image_id:06d}.jpg"
        cv2.imwrite(os.path.join(out_dir, file_name), pixels[:, :, ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        labelled, not_exhaustive = placed, []
        repeated = sorted({c for c in classes if sum(p[0] == c for p in placed) > 1})
        if repeated and rng.random() < not_exhaustive_prob:
            cls = repeated[int(rng.integers(len(repeated)))]
            drop = next(i for i, p in enumerate(placed) if p[0] == cls)
            labelled = placed[:drop] + placed[drop + 1:]
            not_exhaustive = [cls + 1]
        for cls, poly in labelled:
            x0, y0 = np.clip(poly.min(0), 0, image_size)
            x1, y1 = np.clip(poly.max(0), 0, image_size)
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": cls + 1,
                "bbox": [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                "area": round(_polygon_area(poly), 2),
                "segmentation": [[round(float(v), 2) for v in poly.reshape(-1)]],
            })
            ann_id += 1
        present = set(classes)
        images.append({
            "id": image_id, "file_name": file_name, "coco_url": f"lt_synthetic/{file_name}",
            "height": image_size, "width": image_size,
            "neg_category_ids": [c + 1 for c in range(num_classes) if c not in present],
            "not_exhaustive_category_ids": not_exhaustive,
        })
    return images, annotations


def category_entries(num_classes, image_counts, instance_counts):
    cats = []
    for c in range(num_classes):
        shape, color = SHAPES[c // len(COLORS)], list(COLORS)[c % len(COLORS)]
        cats.append({
            "id": c + 1, "name": f"{color}_{shape}", "synset": f"{color}_{shape}.n.01",
            "synonyms": [f"{color}_{shape}"], "def": f"a {color} {shape}",
            "image_count": int(image_counts[c]), "instance_count": int(instance_counts[c]),
            "frequency": str(lvis_frequency(int(image_counts[c]))),
        })
    return cats


@contextlib.contextmanager
def building_dataset_dir(out_dir):
    """A temporary folder (with ``annotations/``) beside ``out_dir``, moved to ``out_dir`` with
    the completeness marker when the block succeeds and deleted when it fails, so an
    interrupted run never leaves a half-written dataset. ``out_dir`` must not exist."""
    if os.path.exists(out_dir):
        raise FileExistsError(f"{out_dir} already exists; remove it or pick another folder.")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}-", dir=parent)
    try:
        os.makedirs(os.path.join(tmp, "annotations"))
        yield tmp
        open(os.path.join(tmp, COMPLETE_MARKER), "w").close()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def generate_synthetic_lt(out_dir, *, seed=0, num_classes=48, max_images=400, min_images=2,
                          val_images_per_class=8, max_classes_per_image=3, image_size=128,
                          min_size=14, max_size=40, not_exhaustive_prob=0.05):
    """Write the dataset to ``out_dir`` (images + ``annotations/lt_synthetic_{train,val}.json``).

    The folder is built beside ``out_dir`` and moved into place only when complete, so an
    interrupted run never leaves a half-written dataset. Returns the path to ``out_dir``.
    """
    if num_classes > len(SHAPES) * len(COLORS):
        raise ValueError(f"num_classes={num_classes}: at most {len(SHAPES) * len(COLORS)} classes.")
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_classes)  # class of each frequency rank
    counts = np.zeros(num_classes, np.int64)
    counts[order] = class_image_targets(num_classes, max_images, min_images)
    with building_dataset_dir(out_dir) as tmp:
        splits = {
            "train": _pack_images(rng, counts, max_classes_per_image),
            "val": _pack_images(rng, np.full(num_classes, val_images_per_class),
                                max_classes_per_image),
        }
        built = {
            split: build_split(rng, split, lists, num_classes, image_size, tmp,
                               not_exhaustive_prob, min_size, max_size)
            for split, lists in splits.items()
        }
        train_anns = built["train"][1]
        image_counts = np.zeros(num_classes, np.int64)
        for lists in splits["train"]:
            image_counts[lists] += 1
        instance_counts = np.bincount([a["category_id"] - 1 for a in train_anns],
                                      minlength=num_classes)
        # as in LVIS, both splits carry the categories with their training statistics
        categories = category_entries(num_classes, image_counts, instance_counts)
        for split, (images, anns) in built.items():
            data = {"info": {"description": f"lt_d2 synthetic long-tailed set, seed {seed}"},
                    "licenses": [], "categories": categories, "images": images,
                    "annotations": anns}
            with open(os.path.join(tmp, "annotations", f"lt_synthetic_{split}.json"), "w") as f:
                json.dump(data, f)
    logger.info("Wrote the synthetic long-tailed dataset to %s", out_dir)
    return out_dir


def prepare_generated_dataset(out_dir, generate, force=False):
    """Run ``generate(out_dir)`` unless ``out_dir`` already holds a complete dataset.

    Returns True if it generated. An incomplete folder (an interrupted run from before the
    atomic write, or someone else's files) is an error unless ``force``, which rebuilds.
    """
    if os.path.exists(out_dir):
        if not force and os.path.exists(os.path.join(out_dir, COMPLETE_MARKER)):
            return False
        if not force:
            raise FileExistsError(f"{out_dir} exists but is not a complete dataset; remove it or "
                                  "use --force.")
        shutil.rmtree(out_dir)
    generate(out_dir)
    return True
