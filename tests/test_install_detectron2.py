# Copyright (c) lt_d2 contributors.
"""tools/install_detectron2.py: the pure-Python fallback, on a fake sdist."""
import importlib.util
import io
import os
import subprocess
import sys
import tarfile

import pytest

from .conftest import REPO


def _installer():
    spec = importlib.util.spec_from_file_location(
        "install_detectron2", os.path.join(REPO, "tools", "install_detectron2.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_sdist(path):
    files = {
        "pb1-detectron2-0.6/setup.py": "raise SystemExit('needs layers/csrc')",
        "pb1-detectron2-0.6/detectron2/__init__.py": "__version__ = '0.6'\n",
        "pb1-detectron2-0.6/detectron2/layers/__init__.py": "from detectron2 import _C\n",
        "pb1-detectron2-0.6/detectron2/model_zoo/__init__.py": "",
        "pb1-detectron2-0.6/detectron2/model_zoo/configs/Base.yaml": "MODEL: {}\n",
        "pb1-detectron2-0.6/projects/PointRend/point_rend/__init__.py": "",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_pure_python_tree_installs_and_imports(tmp_path):
    installer = _installer()
    sdist = tmp_path / "fake.tar.gz"
    _fake_sdist(sdist)
    tree = installer.make_pure_python_tree(str(sdist), str(tmp_path / "src"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), tree], check=True)
    code = ("import detectron2.layers, detectron2._C as C, detectron2.projects.point_rend\n"
            "import os, detectron2.model_zoo as z\n"
            "base = os.path.join(os.path.dirname(z.__file__), 'configs/Base.yaml')\n"
            "assert os.path.exists(base)\n"
            "try:\n    C.nms_rotated\nexcept AttributeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(target)),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "installed as pure Python" in out.stdout


def test_sdist_with_wrong_hash_is_refused(tmp_path):
    installer = _installer()
    sdist = tmp_path / "fake.tar.gz"
    _fake_sdist(sdist)
    with pytest.raises(SystemExit, match="does not match the pinned"):
        installer.verify_sha256(str(sdist))
