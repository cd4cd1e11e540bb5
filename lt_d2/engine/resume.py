# Copyright (c) lt_d2 contributors.
"""Exact resume: what ``LTTrainer`` adds to a checkpoint and restores from it, on detectron2 0.6
and main alike.

A checkpoint written at iteration ``c`` holds, besides the model (whose buffers carry the losses'
and the hallucinator's statistics) and detectron2's own trainer state (iteration, LR scheduler):

* ``_trainer``: the inner trainer's state (optimizer, AMP grad scaler). detectron2 main writes it
  itself; on 0.6, which does not, LTTrainer adds it under the same key (never twice);
* ``lt_resume``: the data stream's seed and shape (:class:`lt_d2.data.stream.ResumableTrainLoader`;
  its position follows from ``c``), the last values of every logged scalar and what each writer
  had written, so that smoothed losses and ``metrics.json`` continue as if nothing stopped.

Randomness: the stream's augmentations are seeded per stream position (see ``stream.py``) and the
model's RNGs (BAGS' others sampling, hallucination, federated-loss classes, ...) are reseeded at
every iteration from (seed, rank, iteration) by :func:`seed_iteration`, so no RNG state needs to
be saved and the same holds on every rank and with any number of data-loader workers.

Checkpoint files are written by :class:`AtomicCheckpointer`: temporary file, fsync, rename, then
``last_checkpoint`` the same way, so a crash never leaves ``last_checkpoint`` naming a partial file.

What holds: on the CPU the resumed run is bit-identical (tests/test_resume.py), with any
``DATALOADER.NUM_WORKERS`` (the stream does not depend on it) and on every rank, provided the
resumed run has the same number of processes, batch size and aspect-ratio grouping (else a
warning: the stream continues at the same batch count with other images) and mappers draw only
from python ``random``, numpy's global RNG and torch's default generator (detectron2's and
lt_d2's do). On GPUs, kernels that are not deterministic (atomic adds in RoIAlign's backward...)
make even two uninterrupted runs differ; the resumed run is then the same run up to that noise.
"""
import glob
import json
import logging
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import hooks
from detectron2.engine.defaults import DefaultTrainer
from detectron2.engine.train_loop import TrainerBase
from detectron2.utils import comm

from ..data.stream import derive_seed
from ..file_io import atomic_write
from .metrics_json import _StrictJSONLines, make_strict

logger = logging.getLogger(__name__)

HISTORY_KEPT = 1000  # last values of each scalar kept in a checkpoint: covers the writers' windows


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose files appear whole or not at all (local folders)."""

    def save(self, name, **kwargs):
        if "://" in str(self.save_dir):  # another storage backend: its own semantics
            return super().save(name, **kwargs)
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        if "://" in str(self.save_dir):
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                     lambda f: f.write(last_filename_basename.encode()))

    def remove_partial_files(self):
        """Delete the temporary files a process killed while saving left behind."""
        if not self.save_to_disk or not self.save_dir or "://" in str(self.save_dir):
            return
        for path in glob.glob(os.path.join(self.save_dir, ".*.pth.*")) + glob.glob(
                os.path.join(self.save_dir, ".last_checkpoint.*")):
            logger.info("Removing %s, a checkpoint a killed process did not finish writing.", path)
            os.remove(path)


def seed_iteration(seed, iteration):
    """Seed python ``random``, numpy and torch (CPU and CUDA) for one training iteration."""
    import random

    import numpy as np

    torch_seed, np_seed = derive_seed(seed, 1 << 20, comm.get_rank(), iteration)
    random.seed(torch_seed)
    np.random.seed(np_seed)
    torch.manual_seed(torch_seed)


# ---- trainer state ----------------------------------------------------------------------------

def _writers(trainer):
    return [w for h in trainer._hooks if isinstance(h, hooks.PeriodicWriter) for w in h._writers]


def storage_state(storage):
    """The scalars logged so far, enough to continue smoothing and writing them."""
    history = {k: {"data": [tuple(x) for x in h._data[-HISTORY_KEPT:]], "count": h._count,
                   "global_avg": h._global_avg} for k, h in storage.histories().items()}
    return {"history": history, "latest": {k: tuple(v) for k, v in storage._latest_scalars.items()},
            "hints": dict(storage._smoothing_hints)}


def restore_storage(storage, state):
    for name, saved in state["history"].items():
        buffer = storage._history[name]  # a defaultdict: created with detectron2's max length
        buffer._data = [tuple(x) for x in saved["data"]]
        buffer._count, buffer._global_avg = saved["count"], saved["global_avg"]
    storage._latest_scalars.update({k: tuple(v) for k, v in state["latest"].items()})
    storage._smoothing_hints.update(state["hints"])


def trainer_state(trainer, state):
    """Complete ``state`` (detectron2's ``trainer.state_dict()``) for an exact resume."""
    if "_trainer" not in state:  # detectron2 0.6: the optimizer is not in its checkpoints
        state["_trainer"] = trainer._trainer.state_dict()
    extra = {"seed": trainer.rng_seed}
    loader = trainer._trainer.data_loader
    if hasattr(loader, "resume"):
        extra["data"] = loader.state_dict()
    storage = getattr(trainer, "storage", None)
    if storage is not None:
        extra["storage"] = storage_state(storage)
        extra["last_write"] = [getattr(w, "_last_write", None) for w in _writers(trainer)]
    state["lt_resume"] = extra
    return state


def load_trainer_state(trainer, state):
    """After detectron2's ``load_state_dict``: the inner trainer on 0.6, and lt_d2's state."""
    if DefaultTrainer.load_state_dict is TrainerBase.load_state_dict:  # detectron2 0.6
        if "_trainer" in state:
            trainer._trainer.load_state_dict(state["_trainer"])
        else:
            logger.warning("The checkpoint has no optimizer state (written without lt_d2's "
                           "resume support): SGD momentum restarts from zero.")
    trainer._lt_resume_state = state.get("lt_resume")


def apply_resume(trainer):
    """Continue the data stream, the per-iteration seeds and the logs after a resume."""
    extra = trainer._lt_resume_state
    if extra is None:
        logger.warning("The checkpoint holds no lt_d2 resume state: the data stream restarts "
                       "from its beginning and the logs' smoothing windows are empty.")
        return
    trainer.rng_seed = extra["seed"]
    loader = trainer._trainer.data_loader
    if hasattr(loader, "resume"):
        loader.resume(trainer.start_iter, extra.get("data"))
    else:
        logger.warning("The training loader (%s) cannot resume: its stream restarts from its "
                       "beginning.", type(loader).__name__)
    if comm.is_main_process() and "last_write" in extra:
        _truncate_metrics(trainer, extra["last_write"])


def _truncate_metrics(trainer, last_write):
    """Drop from metrics.json what the stopped process logged after its checkpoint (it is logged
    again), and set the writers to where they were at the checkpoint."""
    from detectron2.utils.events import JSONWriter
    from detectron2.utils.file_io import PathManager

    writers = _writers(trainer)
    if len(writers) != len(last_write):
        logger.warning("The writers differ from the checkpointed run's; metrics.json may repeat "
                       "iterations.")
        return
    for writer, last in zip(writers, last_write):
        if not isinstance(last, int) or not isinstance(getattr(writer, "_last_write", None), int):
            continue
        writer._last_write = last
        path = getattr(writer._file_handle, "name", "") if isinstance(writer, JSONWriter) else ""
        if os.path.isfile(path):
            strict = isinstance(writer._file_handle, _StrictJSONLines)
            writer._file_handle.close()
            with open(path) as f:
                lines = f.readlines()
            kept = [line for line in lines if _logged_before(line, last)]
            if len(kept) != len(lines):
                logger.info("Removing %d lines of %s logged after the checkpoint.",
                            len(lines) - len(kept), path)
                atomic_write(path, lambda f: f.write("".join(kept).encode()))
            writer._file_handle = PathManager.open(path, "a")
            if strict:  # the reopened file writes NaN metrics as null, as before the resume
                make_strict(writer)


def _logged_before(line, last):
    """Whether a metrics.json line stays: logged up to iteration ``last``, or not a training
    record; a line the kill cut short is dropped."""
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return line.endswith("\n") and record.get("iteration", -1) <= last


def restore_logs(trainer):
    """In ``before_train`` (the event storage exists): the logged scalars, and the write the
    stopped process was due to make right after its checkpoint."""
    extra = trainer._lt_resume_state
    if not extra or "storage" not in extra:
        return
    restore_storage(trainer.storage, extra["storage"])
    last = trainer.start_iter - 1
    if not comm.is_main_process():
        return
    for h in trainer._hooks:
        if isinstance(h, hooks.PeriodicWriter) and ((last + 1) % h._period == 0
                                                    or last == trainer.max_iter - 1):
            trainer.storage.iter = last
            for writer in h._writers:
                writer.write()
            trainer.storage.iter = trainer.start_iter
