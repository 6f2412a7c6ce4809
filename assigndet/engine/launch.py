"""Start one training process per device, on one machine or several (detectron2's ``launch``).

With CUDA, each process drives one GPU and talks NCCL; without CUDA, ``num_gpus_per_machine``
counts CPU processes, which talk gloo. Under ``torchrun`` (its RANK / WORLD_SIZE / LOCAL_RANK
variables are set) the processes already exist: ``launch`` joins the group through ``env://`` and
calls ``main_func`` directly.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from assigndet.utils import comm

__all__ = ["DEFAULT_TIMEOUT", "default_dist_url", "launch", "launch_from_command_line"]

DEFAULT_TIMEOUT = timedelta(minutes=30)
logger = logging.getLogger(__name__)


def default_dist_url() -> str:
    """``tcp://127.0.0.1:<port>`` with the port derived from the user id (49152-65535)."""
    port = 2**15 + 2**14 + hash(os.getuid() if hasattr(os, "getuid") else 1) % 2**14
    return f"tcp://127.0.0.1:{port}"


def _running_under_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: tuple = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run ``main_func(*args)`` in every process of the job.

    Args:
        num_gpus_per_machine: processes per machine (GPUs, or CPU processes without CUDA).
        num_machines, machine_rank: the multi-node layout;
            rank = machine_rank * num_gpus_per_machine + local rank.
        dist_url: rendezvous address, e.g. ``tcp://10.0.0.1:12345``; ``"auto"`` meets through a
            file in a fresh temporary folder (one machine only: no port to pick, so no race with
            other jobs for it); ``None`` derives a port from the user id.
    """
    if _running_under_torchrun() and not comm.is_distributed():
        _init_from_torchrun(timeout)
        main_func(*args)
        return
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        main_func(*args)
        return
    if dist_url is None:
        dist_url = default_dist_url()
    rendezvous_dir = None
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError('dist_url="auto" meets through a local file: one machine only')
        rendezvous_dir = tempfile.mkdtemp(prefix="assigndet-rendezvous-")
        dist_url = f"file://{os.path.join(rendezvous_dir, 'store')}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// rendezvous across machines needs a shared file system")
    try:
        mp.start_processes(
            _distributed_worker,
            nprocs=num_gpus_per_machine,
            args=(
                main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout
            ),
            daemon=False,
            start_method="spawn",
        )
    finally:
        if rendezvous_dir is not None:
            shutil.rmtree(rendezvous_dir, ignore_errors=True)


def launch_from_command_line(
    main_func: Callable[[Any], Any], args: Any, launch_fn: Callable[..., None] = launch
) -> None:
    """Run ``main_func(args)`` in every process that the parsed command line ``args`` asks
    for (``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``), through
    ``launch_fn`` (this module's ``launch``, or detectron2's, which has the same signature)."""
    print("Command Line Args:", args)
    launch_fn(
        main_func,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _distributed_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_gpus_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
    timeout: timedelta,
) -> None:
    if torch.cuda.is_available() and num_gpus_per_machine > torch.cuda.device_count():
        raise ValueError(
            f"--num-gpus {num_gpus_per_machine} asks for more GPUs than the "
            f"{torch.cuda.device_count()} this machine has"
        )
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    try:
        dist.init_process_group(
            backend=_backend(),
            init_method=dist_url,
            world_size=world_size,
            rank=global_rank,
            timeout=timeout,
        )
    except Exception as e:
        raise RuntimeError(f"Process group initialisation failed at {dist_url}: {e}") from e
    _set_local_group(num_gpus_per_machine, world_size // num_gpus_per_machine, machine_rank)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def _init_from_torchrun(timeout: timedelta) -> None:
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=_backend(), init_method="env://", timeout=timeout)
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
    num_machines = dist.get_world_size() // local_size
    _set_local_group(local_size, num_machines, dist.get_rank() // local_size)
    comm.synchronize()


def _set_local_group(local_size: int, num_machines: int, machine_rank: int) -> None:
    """Create one group per machine (every rank must create all of them) and keep ours."""
    for machine in range(num_machines):
        ranks = list(range(machine * local_size, (machine + 1) * local_size))
        group = dist.new_group(ranks)
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
