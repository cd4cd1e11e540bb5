# Copyright (c) lt_d2 contributors.
"""Writing outputs safely: never over an input or an existing file unless asked, and atomically
(what lt_d2 writes, datasets, reports, id lists, appears whole or not at all)."""
import io
import json
import os
import tempfile

__all__ = ["atomic_write", "check_output_path", "write_json_atomic"]


def check_output_path(path, *, overwrite=False, inputs=()):
    """Refuse an output that is one of ``inputs``, or that exists unless ``overwrite``."""
    if not os.path.exists(path):
        return
    for src in inputs:
        if src is not None and os.path.exists(src) and os.path.samefile(src, path):
            raise FileExistsError(f"The output {path} is one of the inputs; choose another path.")
    if not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it.")


def atomic_write(path, write):
    """Write through ``write(binary file object)`` into a temporary file beside ``path``, then
    rename it over ``path``: a reader (or a crash) never sees a half-written file, and a failure
    leaves ``path`` as it was. The folder is created if needed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(obj, path, **dump_kwargs):
    """``json.dump(obj, **dump_kwargs)`` to ``path`` with :func:`atomic_write` (streamed, not
    built as one string: converted datasets can be large)."""
    def dump(f):
        text = io.TextIOWrapper(f, encoding="utf-8")
        json.dump(obj, text, **dump_kwargs)
        text.flush()
        text.detach()  # leave the binary file open for atomic_write's fsync

    atomic_write(path, dump)
