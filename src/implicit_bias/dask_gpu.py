"""One Dask worker per GPU for ``run --workers N --device cuda``.

With dask-cuda installed (``pip install 'implicit-bias[gpu]'``) this is its
``LocalCUDACluster``; without it, a cluster of N single-threaded worker
processes, each started with its own ``CUDA_VISIBLE_DEVICES`` (so ``cuda`` in
the worker is its one GPU). ``--scheduler ADDRESS`` needs none of this: the
GPU workers were started elsewhere (``dask worker`` per GPU, or
dask-jobqueue's ``SLURMCluster``; see docs/scale-out.md).
"""

from __future__ import annotations

import os
from typing import Any

from ._errors import UserInputError


def gpu_worker_devices(n_workers: int, device_count: int, visible: str | None = None) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` of each of ``n_workers`` local workers.

    One GPU per worker, in order; more workers than GPUs share them round-robin.
    ``visible`` (the parent's ``CUDA_VISIBLE_DEVICES``) restricts and names the
    GPUs; otherwise they are ``0 … device_count − 1``.

    Raises:
        UserInputError: no GPU to assign, or ``n_workers < 1``.
    """
    if n_workers < 1:
        raise UserInputError(f"--workers must be >= 1 (got {n_workers})")
    if visible is not None and visible.strip() not in ("", "-1"):
        ids = [v.strip() for v in visible.split(",") if v.strip()]
    elif visible is None:
        ids = [str(i) for i in range(device_count)]
    else:
        ids = []
    if not ids:
        raise UserInputError("--device cuda: no CUDA device is visible for the workers")
    return [ids[i % len(ids)] for i in range(n_workers)]


def gpu_cluster(n_workers: int, device_count: int | None = None, use_dask_cuda: bool = True):
    """A local Dask cluster with one single-threaded worker per GPU (see the module)."""
    if device_count is None:
        import torch

        device_count = torch.cuda.device_count()
    devices = gpu_worker_devices(n_workers, device_count, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if use_dask_cuda and len(set(devices)) == len(devices):
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            pass
        else:
            return LocalCUDACluster(
                CUDA_VISIBLE_DEVICES=",".join(devices),
                n_workers=n_workers,
                threads_per_worker=1,
                dashboard_address=None,
            )
    from distributed import Nanny, Scheduler, SpecCluster

    workers: dict[str, dict[str, Any]] = {
        f"gpu-{i}": {
            "cls": Nanny,
            "options": {"nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": dev}},
        }
        for i, dev in enumerate(devices)
    }
    scheduler = {
        "cls": Scheduler,
        "options": {"host": "127.0.0.1", "port": 0, "dashboard_address": None},
    }
    return SpecCluster(workers=workers, scheduler=scheduler, name="implicit-bias-gpu")
