# Copyright (c) lt_d2 contributors.
"""detectron2's ``launch``, which also runs several training processes on a machine without CUDA.

detectron2 0.6's ``launch`` asserts CUDA and NCCL for more than one process. Without CUDA, lt_d2
runs the processes on the CPU and lets them talk over the gloo backend, as detectron2 main does;
with CUDA (or a detectron2 that has the gloo fallback) it is detectron2's own launch.
"""
import os
from datetime import timedelta

from ..compat import apply_all


def _detectron2_launch_supports_cpu():
    from detectron2.utils import comm

    # detectron2 main grew create_local_process_group together with its gloo fallback.
    return hasattr(comm, "create_local_process_group")


def has_cuda():
    import torch

    return torch.cuda.is_available()


def max_processes_per_machine():
    """How many training processes this machine can run: one per GPU, else one per CPU core."""
    import torch

    if has_cuda():
        return torch.cuda.device_count()
    return os.cpu_count() or 1


def check_num_processes(num_gpus_per_machine):
    """Raise ValueError, with the fix, if this machine cannot run that many processes."""
    available = max_processes_per_machine()
    if num_gpus_per_machine > available:
        what = "GPUs" if has_cuda() else "CPU cores and no CUDA GPU"
        raise ValueError(
            f"--num-gpus {num_gpus_per_machine} is more than this machine can run ({available} "
            f"{what}). Use --num-gpus {available} or less."
        )


def launch(
    main_func,
    num_gpus_per_machine,
    num_machines=1,
    machine_rank=0,
    dist_url=None,
    args=(),
    timeout=timedelta(minutes=30),
):
    """detectron2's ``launch``, which also runs several processes on a machine without CUDA.

    Same arguments as :func:`detectron2.engine.launch`. Without CUDA each process trains on
    the CPU and the processes talk over gloo; with CUDA it is detectron2's NCCL launch.
    """
    import torch
    from detectron2.engine import launch as d2_launch

    check_num_processes(num_gpus_per_machine)
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1 or torch.cuda.is_available() or _detectron2_launch_supports_cpu():
        return d2_launch(main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url,
                         args=args, timeout=timeout)
    import torch.multiprocessing as mp

    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto only works for single-machine jobs.")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    mp.start_processes(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
    )


def _free_port():
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _cpu_worker(local_rank, main_func, world_size, num_per_machine, machine_rank, dist_url, args,
                timeout):
    import torch
    import torch.distributed as dist
    from detectron2.utils import comm

    apply_all()  # spawned processes start from a fresh interpreter
    global_rank = machine_rank * num_per_machine + local_rank
    dist.init_process_group(
        backend="gloo", init_method=dist_url, world_size=world_size, rank=global_rank,
        timeout=timeout,
    )
    num_machines = world_size // num_per_machine
    for i in range(num_machines):
        group = dist.new_group(list(range(i * num_per_machine, (i + 1) * num_per_machine)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group  # detectron2 0.6 has no public setter
    # share the cores between the processes instead of oversubscribing them
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_per_machine))
    comm.synchronize()
    try:
        main_func(*args)
        # A process that exits while gloo's threads still run aborts ("terminate called without
        # an active exception"); let every rank finish, then close the group before exiting.
        comm.synchronize()
    finally:
        dist.destroy_process_group()
