# Copyright (c) lt_d2 contributors.
"""gather_predictions over two gloo processes: everything reaches the main process once, in
rank order, and the main process keeps its own predictions rather than a deserialised copy."""
import json
import os

import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank, world_size, init_file, out_dir):
    import lt_d2  # noqa: F401  (compatibility fixes before detectron2)
    from lt_d2.evaluation.distributed import gather_predictions

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    own = [{"rank": rank, "index": i} for i in range(rank + 2)]
    joined = gather_predictions(own)
    report = {"joined": joined,
              "own_kept": joined is not None and all(a is b for a, b in zip(joined, own))}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    dist.barrier()
    dist.destroy_process_group()


def test_two_processes_join_on_main_with_one_copy(tmp_path):
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2,
                       start_method="spawn")
    main, other = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert main["joined"] == [{"rank": 0, "index": 0}, {"rank": 0, "index": 1},
                              {"rank": 1, "index": 0}, {"rank": 1, "index": 1},
                              {"rank": 1, "index": 2}]
    assert main["own_kept"]
    assert other["joined"] is None
