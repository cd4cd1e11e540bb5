#!/usr/bin/env python
"""Install detectron2 into the running Python environment, for lt_d2.

detectron2 is not published on PyPI. In order of preference this script:

1. keeps an already installed detectron2 (``--force`` reinstalls);
2. builds the official sources (with compiled ops) when the official repository is reachable;
3. otherwise installs the v0.6 Python sources from PyPI's ``pb1-detectron2==0.6`` sdist as a pure
   Python package. That sdist lacks ``layers/csrc``, so its own setup.py cannot build; we install
   its ``detectron2`` package with a placeholder ``_C`` module instead. Rotated boxes, deformable
   convolution and the C++ COCO evaluation are then unavailable; lt_d2 needs none of them.

Standard library only: it runs before any lt_d2 dependency is importable.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request

OFFICIAL_REPO = "https://github.com/facebookresearch/detectron2.git"
SDIST_PROJECT = "pb1-detectron2"
SDIST_FILENAME = "pb1-detectron2-0.6.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
# detectron2's setup.py installs these in-tree projects as detectron2.projects.*
PROJECTS = {
    "detectron2.projects.point_rend": "projects/PointRend/point_rend",
    "detectron2.projects.deeplab": "projects/DeepLab/deeplab",
    "detectron2.projects.panoptic_deeplab": "projects/Panoptic-DeepLab/panoptic_deeplab",
}

PLACEHOLDER_C = '''"""Placeholder for detectron2's compiled extension.

Written by lt_d2's tools/install_detectron2.py: this detectron2 was installed from its Python
sources only, so the compiled operators are missing.
"""


def __getattr__(name):
    raise AttributeError(
        f"detectron2._C.{name} is unavailable: detectron2 was installed as pure Python "
        "(no compiled ops). Rebuild detectron2 from source to use rotated boxes, deformable "
        "convolution or the C++ COCO evaluation."
    )
'''

PURE_SETUP_PY = '''from setuptools import find_packages, setup

PROJECTS = {projects!r}
setup(
    name="detectron2",
    version="0.6",
    description="detectron2 v0.6 Python sources (pure Python, no compiled ops), installed by lt_d2",
    packages=find_packages(exclude=("configs", "tests*")) + list(PROJECTS),
    package_dir=PROJECTS,
    package_data={{"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]}},
    python_requires=">=3.7",
)
'''


def log(msg):
    print(f"[install_detectron2] {msg}", flush=True)


def installed_version(python):
    """Version string of the detectron2 importable by ``python``, or None."""
    out = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('detectron2'))"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() if out.returncode == 0 else None


def official_source_reachable(timeout=20):
    if shutil.which("git") is None:
        return False
    try:
        res = subprocess.run(
            ["git", "ls-remote", OFFICIAL_REPO, "HEAD"],
            capture_output=True,
            timeout=timeout,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
    except subprocess.TimeoutExpired:
        return False
    return res.returncode == 0


def index_url(python):
    """The simple-API index that pip on ``python`` is configured to use."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    res = subprocess.run(
        [python, "-m", "pip", "config", "get", "global.index-url"], capture_output=True, text=True
    )
    if res.returncode == 0 and res.stdout.strip():
        return res.stdout.strip()
    res = subprocess.run(
        [python, "-c", "from pip._internal.models.index import PyPI; print(PyPI.simple_url)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return res.stdout.strip()


def fetch_sdist(index, dest_dir):
    """Download the pb1-detectron2 0.6 sdist from ``index`` and check its sha256."""
    req = urllib.request.Request(
        index.rstrip("/") + f"/{SDIST_PROJECT}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        files = json.load(resp)["files"]
    matches = [f for f in files if f["filename"] == SDIST_FILENAME]
    if not matches:
        raise SystemExit(f"{SDIST_FILENAME} is not listed by the package index {index}.")
    path = os.path.join(dest_dir, SDIST_FILENAME)
    with urllib.request.urlopen(matches[0]["url"], timeout=300) as resp, open(path, "wb") as f:
        shutil.copyfileobj(resp, f)
    verify_sha256(path)
    return path


def verify_sha256(path, expected=SDIST_SHA256):
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    if digest != expected:
        raise SystemExit(
            f"{path}: sha256 {digest} does not match the pinned {expected}; refusing it.")


def make_pure_python_tree(sdist_path, work_dir):
    """Unpack the sdist and turn it into a pure-Python source tree; returns its path."""
    with tarfile.open(sdist_path) as tar:
        tar.extractall(work_dir, filter="data")
    (top,) = [d for d in os.listdir(work_dir) if os.path.isdir(os.path.join(work_dir, d))]
    tree = os.path.join(work_dir, top)
    with open(os.path.join(tree, "detectron2", "_C.py"), "w") as f:
        f.write(PLACEHOLDER_C)
    projects = {k: v for k, v in PROJECTS.items() if os.path.isdir(os.path.join(tree, v))}
    with open(os.path.join(tree, "setup.py"), "w") as f:
        f.write(PURE_SETUP_PY.format(projects=projects))
    for stale in ("pyproject.toml", "setup.cfg"):
        if os.path.exists(os.path.join(tree, stale)):
            os.remove(os.path.join(tree, stale))
    return tree


def pip_install(python, *args):
    subprocess.run([python, "-m", "pip", "install", *args], check=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--source",
        choices=["auto", "official", "sdist"],
        default=os.environ.get("LT_D2_DETECTRON2_SOURCE", "auto"),
        help="auto: official source build if reachable, else the pure-Python v0.6 sdist",
    )
    parser.add_argument("--sdist", help="use this local pb1-detectron2-0.6.tar.gz (sha256-checked)")
    parser.add_argument("--force", action="store_true", help="reinstall even if detectron2 exists")
    args = parser.parse_args(argv)
    python = sys.executable

    version = installed_version(python)
    if version and not args.force:
        log(f"detectron2 {version} is already installed; nothing to do (--force to reinstall).")
        return 0
    if args.source == "official" or (
        args.source == "auto" and not args.sdist and official_source_reachable()
    ):
        log(f"building detectron2 from the official sources ({OFFICIAL_REPO}).")
        pip_install(python, "--no-build-isolation", f"detectron2 @ git+{OFFICIAL_REPO}")
        return 0
    log("official sources unreachable: installing the v0.6 Python sources (no compiled ops).")
    with tempfile.TemporaryDirectory() as tmp:
        if args.sdist:
            verify_sha256(args.sdist)
            sdist = args.sdist
        else:
            sdist = fetch_sdist(index_url(python), tmp)
        tree = make_pure_python_tree(sdist, os.path.join(tmp, "src"))
        pip_install(python, "--no-deps", "--no-build-isolation", tree)
    log(f"installed detectron2 {installed_version(python)} (pure Python).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
