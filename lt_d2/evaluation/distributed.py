# Copyright (c) lt_d2 contributors.
"""Gathering evaluator predictions on the main process, one copy of each."""
import detectron2.utils.comm as comm


def gather_predictions(own):
    """Every process's list of predictions joined on the main process (None elsewhere).

    detectron2's gather hands the main process a deserialised duplicate of its own list too;
    it is replaced by the original, and each rank's list is dropped once joined, so the main
    process never holds two copies of any prediction.
    """
    comm.synchronize()
    per_rank = comm.gather(own, dst=0)
    if not comm.is_main_process():
        return None
    per_rank[comm.get_rank()] = own
    joined = []
    for rank in range(len(per_rank)):
        joined.extend(per_rank[rank])
        per_rank[rank] = None
    return joined
