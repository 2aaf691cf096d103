"""``run --workers N --device cuda``: one single-threaded worker per GPU (device count mocked)."""

from __future__ import annotations

import builtins

import pytest

from implicit_bias import UserInputError
from implicit_bias.dask_gpu import gpu_cluster, gpu_worker_devices


def test_one_gpu_per_worker():
    assert gpu_worker_devices(4, 4) == ["0", "1", "2", "3"]
    assert gpu_worker_devices(2, 8) == ["0", "1"]
    # more workers than GPUs: round-robin
    assert gpu_worker_devices(3, 2) == ["0", "1", "0"]
    # the parent's CUDA_VISIBLE_DEVICES names the GPUs (ids or UUIDs)
    assert gpu_worker_devices(2, 8, "2,5") == ["2", "5"]
    assert gpu_worker_devices(2, 0, "GPU-aa, GPU-bb") == ["GPU-aa", "GPU-bb"]


@pytest.mark.parametrize("count, visible", [(0, None), (4, ""), (4, "-1")])
def test_no_gpu_is_a_user_error(count, visible):
    with pytest.raises(UserInputError, match="no CUDA device"):
        gpu_worker_devices(1, count, visible)
    with pytest.raises(UserInputError, match="workers"):
        gpu_worker_devices(0, 2)


def test_local_cluster_pins_each_worker_to_its_gpu(monkeypatch):
    """Without dask-cuda: N single-threaded worker processes, each with its own
    CUDA_VISIBLE_DEVICES (two GPUs mocked by the device count)."""
    pytest.importorskip("dask.distributed")
    from dask.distributed import Client

    real_import = builtins.__import__

    def no_dask_cuda(name, *args, **kwargs):
        if name == "dask_cuda":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dask_cuda)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with gpu_cluster(2, device_count=2) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        assert set(client.nthreads().values()) == {1}
        seen = client.run(lambda: __import__("os").environ.get("CUDA_VISIBLE_DEVICES"))
        assert sorted(seen.values()) == ["0", "1"]
