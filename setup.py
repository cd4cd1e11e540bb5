#!/usr/bin/env python
from setuptools import find_packages, setup

setup(
    name="lt_d2",
    version="0.1.0",
    description="Long-tailed object detection methods for Detectron2",
    packages=find_packages(exclude=("configs", "tests*", "tools", "datasets")),
    python_requires=">=3.10",
    # detectron2 is not on PyPI: `make setup` (tools/install_detectron2.py) installs it.
    install_requires=[
        "torch>=2.0",
        "torchvision",
        "fvcore",
        "lvis",
        "pycocotools",
        "opencv-python-headless",
        "numpy",
        "numba",
    ],
)
