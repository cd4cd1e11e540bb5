# Copyright (c) lt_d2 contributors.
"""The training data stream, built so that a resumed run sees exactly the batches an
uninterrupted run would have seen.

detectron2's train loader (sampler -> mapper in the workers -> aspect-ratio grouping or batching)
cannot be resumed: its buckets, its workers' RNG and the sampler's position live only in memory,
and the augmentations draw from a per-worker RNG whose state depends on the worker count and on
everything mapped before. :class:`ResumableTrainLoader` produces the same kind of batches with
three changes that make its stream a pure function of (seed, position in the stream):

* every element is mapped under RNGs (python ``random``, numpy, torch CPU) seeded from (seed,
  global stream position); the caller's RNG state is restored afterwards, so with 0 workers the
  model's RNG stream is untouched by augmentation, and with N workers the stream is the same as
  with 0;
* elements reach the main process in sampler order (each worker maps every N-th element; torch's
  DataLoader returns them in order) and are grouped / batched there;
* the aspect-ratio group of an element is read from the dataset dict's ``width`` / ``height`` of
  the sampled index (what the mapped dict carries for detectron2's mappers).

So after ``k`` batches the state is known without having kept any: replay the sampler's indices
(cheap; no image is read) through the grouping until ``k`` batches are complete; the next
position and the elements left in the buckets are where to continue (:meth:`resume`).
"""
import itertools
import logging

import numpy as np
import torch
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm
from detectron2.utils.serialize import PicklableWrapper
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

logger = logging.getLogger(__name__)

__all__ = ["ResumableTrainLoader", "seeded_rngs", "derive_seed"]


def derive_seed(*words):
    """A 64-bit seed from non-negative integers (numpy's SeedSequence mixing: nearby inputs give
    unrelated seeds)."""
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(2, np.uint64)
    return int(state[0]) >> 1, int(state[1]) & 0xFFFFFFFF  # (torch/python, numpy) seeds


class seeded_rngs:
    """Context manager: python ``random``, numpy's global RNG and torch's CPU generator seeded
    from ``words``; their previous states are restored on exit (CUDA generators are not
    touched)."""

    def __init__(self, *words):
        self._seeds = derive_seed(*words)

    def __enter__(self):
        import random

        self._saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        random.seed(self._seeds[0])
        np.random.seed(self._seeds[1])
        torch.default_generator.manual_seed(self._seeds[0])

    def __exit__(self, *exc):
        import random

        random.setstate(self._saved[0])
        np.random.set_state(self._saved[1])
        torch.set_rng_state(self._saved[2])
        return False


def _identity(x):
    return x


def aspect_groups(dataset_dicts, grouping):
    """Group id of every dict: detectron2's two groups (0: width > height, 1: otherwise), or one
    group without grouping."""
    if not grouping:
        return np.zeros(len(dataset_dicts), np.uint8)
    missing = [i for i, d in enumerate(dataset_dicts) if "width" not in d or "height" not in d]
    if missing:
        raise ValueError(
            f"DATALOADER.ASPECT_RATIO_GROUPING needs 'width' and 'height' in every training dict "
            f"({len(missing)} lack them, e.g. {dataset_dicts[missing[0]].get('file_name')}): lt_d2 "
            "groups images by the sizes the dataset records so that a resumed run can rebuild the "
            "groups without reading images. Add them to the dataset or set "
            "DATALOADER.ASPECT_RATIO_GROUPING False.")
    return np.array([0 if d["width"] > d["height"] else 1 for d in dataset_dicts], np.uint8)


class _MappedStream(IterableDataset):
    """(group, mapped dict) for the positions ``pending`` (in order), then ``start``, ``start +
    1``, ... of the sampler's stream; a data-loader worker keeps every num_workers-th element."""

    def __init__(self, loader):
        self.dataset, self.sampler, self.mapper = loader._dataset, loader.sampler, loader._mapper
        self.groups, self.seed = loader._groups, loader.seed
        self.start, self.pending = loader._start, list(loader._pending)
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()

    def _positions(self):
        indices = iter(self.sampler)
        pending, first = set(self.pending), []
        for pos, idx in zip(range(self.start), indices):  # skip: indices only, no image read
            if pos in pending:
                first.append((pos, idx))
        yield from first
        yield from zip(itertools.count(self.start), indices)

    def _map(self, pos, idx):
        global_pos = pos * self.world_size + self.rank  # ranks map distinct positions
        with seeded_rngs(self.seed, global_pos):
            for retry in itertools.count():
                data = self.mapper(self.dataset[idx])
                if data is not None:
                    return data
                # as detectron2's MapDataset: another image, here drawn from the seeded RNG
                idx = int(np.random.randint(len(self.dataset)))
                if retry == 2:
                    logger.warning(
                        "The mapper dropped 3 images in a row at stream position %d.", pos)

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for element, (pos, idx) in enumerate(self._positions()):
            if element % num_workers == worker:
                yield int(self.groups[idx]), self._map(pos, idx)


class ResumableTrainLoader:
    """An infinite iterable of per-rank batches (lists of mapped dicts), like detectron2's
    train loader, that can continue exactly where an earlier run stopped (:meth:`resume`).

    Args:
        dataset_dicts (list[dict]): the training dicts.
        sampler: an infinite sampler of indices into ``dataset_dicts`` for this rank, with a
            ``_seed`` attribute as detectron2's and lt_d2's samplers (restored on resume).
        mapper (callable): dict -> mapped dict (or None to drop it).
        batch_size (int): images per batch on this rank.
        aspect_ratio_grouping (bool): batch images of the same orientation together.
        num_workers (int): data-loader worker processes (0: map in the main process).
    """

    def __init__(self, dataset_dicts, sampler, mapper, batch_size, *, aspect_ratio_grouping=True,
                 num_workers=0):
        self._dataset = DatasetFromList(dataset_dicts, copy=False)
        self._groups = aspect_groups(dataset_dicts, aspect_ratio_grouping)
        self.sampler = sampler
        self._mapper = PicklableWrapper(mapper)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.aspect_ratio_grouping = bool(aspect_ratio_grouping)
        seed = getattr(sampler, "_seed", None)
        self.seed = int(comm.shared_random_seed() if seed is None else seed)
        self._start, self._pending = 0, []

    def state_dict(self):
        """What must match for an exact resume; the position itself follows from the number of
        batches consumed."""
        return {"seed": self.seed, "batch_size": self.batch_size,
                "world_size": comm.get_world_size(), "grouping": self.aspect_ratio_grouping,
                "sampler": type(self.sampler).__name__}

    def resume(self, num_batches, state=None):
        """Continue after ``num_batches`` batches of the stream that ``state`` (this loader's
        :meth:`state_dict` in the earlier run) describes. Costs one pass of the sampler's
        indices over the consumed part of the stream (no image is read)."""
        if state:
            if state["seed"] != self.seed:
                if hasattr(self.sampler, "_seed"):
                    self.sampler._seed = state["seed"]
                else:
                    logger.warning("Sampler %s has no _seed: its stream is not restored.",
                                   type(self.sampler).__name__)
                self.seed = state["seed"]
            current = self.state_dict()
            changed = [k for k in ("batch_size", "world_size", "grouping", "sampler")
                       if state.get(k) != current[k]]
            if changed:
                logger.warning("Resuming with a different %s than the checkpointed run (%s -> %s): "
                               "the data stream continues at the same number of batches but not "
                               "with the images the earlier run would have seen.",
                               ", ".join(changed), [state.get(k) for k in changed],
                               [current[k] for k in changed])
        self._start, self._pending = self._position_after(num_batches)
        logger.info("Data stream resumes after %d batches: at sampler position %d, with %d images "
                    "waiting in the aspect-ratio groups.", num_batches, self._start,
                    len(self._pending))

    def _position_after(self, num_batches):
        if num_batches <= 0:
            return 0, []
        buckets, done = ([], []), 0
        for pos, idx in enumerate(iter(self.sampler)):
            bucket = buckets[self._groups[idx]]
            bucket.append(pos)
            if len(bucket) == self.batch_size:
                bucket.clear()
                done += 1
                if done == num_batches:
                    return pos + 1, sorted(buckets[0] + buckets[1])

    def __iter__(self):
        # a generator: nothing (workers included) starts before the first batch is asked for,
        # so a resume() after iter() (detectron2 0.6's SimpleTrainer) still applies
        stream = _MappedStream(self)
        if self.num_workers > 0:
            stream = DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                                collate_fn=_identity)
        buckets = ([], [])
        for group, data in stream:
            bucket = buckets[group]
            bucket.append(data)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()
