# Copyright (c) lt_d2 contributors.
"""Stateful losses keep one state across processes: a 2-process gloo run ends, on every rank,
with the state a single process reaches on the same global batch."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lt_d2.modeling.losses import EQLv2Loss, FCBLLoss, SeesawLoss

K = 5
LOSSES = {"EQLv2Loss": EQLv2Loss, "SeesawLoss": SeesawLoss, "FCBLLoss": FCBLLoss}


def _batches(num_logits, steps=3, rows=12):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(rows, num_logits, generator=g),
             torch.randint(0, K + 1, (rows,), generator=g)) for _ in range(steps)]


def _worker(rank, world_size, init_file, out_dir):
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    for name, cls in LOSSES.items():
        loss_fn = cls(num_classes=K)
        for logits, labels in _batches(loss_fn.num_logits):
            half = len(labels) // world_size
            part = slice(rank * half, (rank + 1) * half)
            loss_fn(logits[part], labels[part])
        torch.save(loss_fn.state_dict(), os.path.join(out_dir, f"{name}_{rank}.pth"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_states(tmp_path_factory):
    out = tmp_path_factory.mktemp("sync")
    mp.start_processes(_worker, args=(2, str(out / "init"), str(out)),
                       nprocs=2, start_method="spawn")
    return out


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_rank_holds_the_single_process_state(two_process_states, name):
    single = LOSSES[name](num_classes=K)
    for logits, labels in _batches(single.num_logits):
        single(logits, labels)  # the global batch: the sums two all-reduced halves give
    ranks = [torch.load(two_process_states / f"{name}_{r}.pth") for r in range(2)]
    for key, value in single.state_dict().items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        assert torch.allclose(ranks[0][key], value, rtol=1e-5, atol=1e-5), key
