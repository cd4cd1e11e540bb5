# Copyright (c) lt_d2 contributors.
"""What every lt_d2 dataset shares in detectron2's catalogs: the dataset root, the error for a
missing file (it names the dataset, the path and the expected layout), and the one function that
puts what a dataset's files say (class names, id map, class statistics) into its metadata.
"""
import os

from detectron2.data import MetadataCatalog

__all__ = ["DatasetFormatError", "check_dataset_files", "datasets_root", "fill_metadata",
           "require_file"]


class DatasetFormatError(ValueError):
    """Dataset files that do not hold what their format (LVIS / COCO json) requires."""


def datasets_root():
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def require_file(path, what, dataset_name=None):
    """Return ``path``; raise FileNotFoundError naming the dataset, the path, the dataset root
    and the dataset's ``layout_hint`` if it does not exist."""
    if os.path.exists(path):
        return path
    meta = MetadataCatalog.get(dataset_name) if dataset_name is not None else None
    hint = meta.get("layout_hint", None) if meta is not None else None
    dataset = f"Dataset '{dataset_name}': " if dataset_name is not None else ""
    raise FileNotFoundError(
        f"{dataset}{what} '{path}' does not exist. Datasets are looked up under "
        f"$DETECTRON2_DATASETS (now '{datasets_root()}'). "
        f"{hint or 'See datasets/README.md for the expected layout.'}"
    )


def check_dataset_files(dataset_name):
    """Raise FileNotFoundError with the fix if a registered dataset's files are missing."""
    meta = MetadataCatalog.get(dataset_name)
    for key in ("json_file", "image_root", "image_ids_file"):
        path = meta.get(key, None)
        if path is not None:
            require_file(path, key, dataset_name)


def fill_metadata(dataset_name, values, source=None):
    """Put ``values``, what the files ``source`` of dataset ``dataset_name`` say, into its
    metadata: each key it does not have yet (what registration gave wins). A class list given
    at registration must have as many classes as the files."""
    meta = MetadataCatalog.get(dataset_name)
    registered, found = meta.get("thing_classes", None), values.get("thing_classes")
    if registered is not None and found is not None and len(registered) != len(found):
        raise DatasetFormatError(
            f"Dataset '{dataset_name}' was registered with {len(registered)} classes but "
            f"{source} has {len(found)}. Register it with the class list of that file.")
    for key, value in values.items():
        if meta.get(key, None) is None:
            meta.set(**{key: value})
