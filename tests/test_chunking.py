"""Device-aware automatic chunking, and a folder that resumes with the chunks it began with.

CUDA is mocked (``torch.cuda.is_available`` / ``mem_get_info``), so all of it
runs on the CPU.
"""

from __future__ import annotations

import json

import numpy as np
import torch

import implicit_bias as ib
from implicit_bias import planning as sweep  # the chunk sizing lives in planning
from implicit_bias.config import load_config

GiB = 1 << 30

# the phase diagram: 1024 runs, depth-3 ReLU width 256, n 512, d 32
PHASE = {
    "data": {"kind": "overlap", "n_train": 512, "n_test": 0, "d": 32},
    "model": {"depth": 3, "width": 256, "activation": "relu", "parametrization": "ntk"},
    "train": {"steps": 1000, "device": "cuda"},
    "metrics": {"every": 100, "sharpness": {"iters": 20}},
}


def _mock_cuda(monkeypatch, free: int, total: int = 141 * GiB):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (free, total))
    monkeypatch.setattr(sweep, "_CHUNK_BYTES_SET", False)


def _equal(fit: int, total: int) -> int:
    """The chunk size auto_chunk_runs makes of ``fit`` runs per chunk: equal chunks."""
    return -(-total // -(-total // fit))


def _chunks(raw, group_size):
    cfg = load_config(raw)
    return sweep.auto_chunk_runs(cfg, 512, 32, 0, group_size)


def test_cuda_sizes_chunks_from_free_memory_without_a_run_cap(monkeypatch):
    _mock_cuda(monkeypatch, free=139 * GiB)
    per_run = sweep.estimate_run_bytes(load_config(PHASE), 512, 32, 0)
    assert 1024 * per_run < 0.7 * 139 * GiB  # the whole diagram fits …
    assert _chunks(PHASE, 1024) == 1024  # … so it is one chunk (not 512, not 32)
    # little free memory: as many runs as 70 % of it holds, in equal chunks
    _mock_cuda(monkeypatch, free=4 * GiB)
    fit = int(0.7 * 4 * GiB) // per_run
    k = _chunks(PHASE, 1024)
    assert k <= fit and -(-1024 // k) == -(-1024 // fit)
    # an explicit store.chunk_runs always wins
    assert _chunks({**PHASE, "store": {"chunk_runs": 7}}, 1024) == 7


def test_cuda_config_planned_without_a_gpu_uses_the_cpu_budget(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sweep, "available_ram", lambda: 64 * GiB)
    per_run = sweep.estimate_run_bytes(load_config(PHASE), 512, 32, 0)
    assert _chunks(PHASE, 1024) == _equal(sweep.CHUNK_BYTES // per_run, 1024)


def test_cpu_keeps_its_budget_unless_ram_binds(monkeypatch):
    cpu = {**PHASE, "train": {"steps": 1000}}
    per_run = sweep.estimate_run_bytes(load_config(cpu), 512, 32, 0)
    monkeypatch.setattr(sweep, "available_ram", lambda: 64 * GiB)
    plenty = _chunks(cpu, 1024)
    assert plenty == _equal(sweep.CHUNK_BYTES // per_run, 1024)  # today's 1 GiB
    monkeypatch.setattr(sweep, "available_ram", lambda: None)  # unknown: the same
    assert _chunks(cpu, 1024) == plenty
    monkeypatch.setattr(sweep, "available_ram", lambda: 256 << 20)  # RAM binds: half of it
    small = _chunks(cpu, 1024)
    assert small < plenty and small <= (128 << 20) // per_run
    # the CPU keeps its run cap
    monkeypatch.setattr(sweep, "available_ram", lambda: 64 * GiB)
    tiny = {**cpu, "model": {"depth": 1}, "metrics": {"sharpness": False}}
    assert _chunks(tiny, 2000) <= sweep.MAX_CHUNK_RUNS


def test_available_ram_reads_proc_meminfo_without_psutil(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_psutil(name, *args, **kwargs):
        if name == "psutil":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    ram = sweep.available_ram()
    assert ram is None or ram > 0


SMALL = {
    "name": "resume",
    "data": {"kind": "overlap", "n_train": 16, "n_test": 4, "d": 4},
    "model": {"depth": 2, "width": 8, "activation": "relu"},
    "train": {"steps": 5, "lr": 0.5},
    "metrics": {"every": 5, "sharpness": False},
    "sweep": {"seed": list(range(8))},
}


def _run_with_budget(monkeypatch, out, runs_per_chunk, **kw):
    per_run = sweep.estimate_run_bytes(load_config(SMALL), 16, 4, 4)
    monkeypatch.setattr(sweep, "CHUNK_BYTES", per_run * runs_per_chunk)
    return ib.run(SMALL, out=out, **kw)["group_000"].to_dataset()


def test_folder_resumes_with_the_chunking_it_began_with(monkeypatch, tmp_path):
    whole = _run_with_budget(monkeypatch, tmp_path / "whole", 8)
    out = tmp_path / "resumed"
    _run_with_budget(monkeypatch, out, 2)  # begun in chunks of 2 (a small device)
    assert json.loads((out / "chunking.json").read_text())["chunk_runs"] == {"0": 2}
    for name in ("g000-c00001.nc", "g000-c00003.nc"):  # interrupted: two chunks missing
        (out / "chunks" / name).unlink()
    resumed = _run_with_budget(monkeypatch, out, 8)  # resumed where 8 would fit
    assert sorted(p.name for p in (out / "chunks").glob("*.nc")) == [
        f"g000-c{i:05d}.nc" for i in range(4)
    ]
    for v in ("loss", "final_W1", "phase"):
        np.testing.assert_array_equal(resumed[v].values, whole[v].values)


def test_folder_from_before_the_record_keeps_its_chunks(monkeypatch, tmp_path):
    whole = _run_with_budget(monkeypatch, tmp_path / "whole", 8)
    out = tmp_path / "old"
    _run_with_budget(monkeypatch, out, 4)
    (out / "chunking.json").unlink()  # as a folder made before this file existed
    (out / "chunks" / "g000-c00001.nc").unlink()
    resumed = _run_with_budget(monkeypatch, out, 1)
    assert json.loads((out / "chunking.json").read_text())["chunk_runs"] == {"0": 4}
    assert len(list((out / "chunks").glob("*.nc"))) == 2
    np.testing.assert_array_equal(resumed["loss"].values, whole["loss"].values)
