"""The GPU measurements of issue 12 in one process (driven by ``gpu_check.sh``).

Writes ``OUT/gpu-check.json`` after each stage (so a run cut short keeps what
it measured):

- ``peak``: fp32 matmul rate (8192², full precision), GFLOP/s;
- ``reference``: the 64-run × 1000-step linear reference, ``run`` − ``validate``
  on the GPU, against the per-run baseline loop on the GPU. To stay inside the
  5-minute budget the baseline loop runs ``--baseline-runs`` of the 64 runs
  (one run at a time, so its time is linear in runs) and is scaled to 64; both
  the measured and the scaled times are written;
- ``phase_diagram``: 1024 runs × ``--pd-steps`` at ``matmul_precision`` highest
  and high: chunks, training TFLOP/s and % of the peak (``bench.phase_diagram_rows``);
- ``syncs``: ``cudaStreamSynchronize`` calls and host→device copies counted by
  ``torch.profiler`` over 60 training steps of 64 phase-diagram runs (eval at
  0 and 60 only): ~0 expected besides start-up and the two evals;
- ``cnn`` (issue 17): the generic path's CNN sweep (``bench.cnn_rows``: 32 runs of a
  two-conv tanh net on digits, a loop over runs and ``vmap``) against the hand-written
  per-run loop on the GPU; goal ≥ 20×;
- ``central_flow`` (issue 19): the same sweep with and without ``train.flow: central``
  (``bench.central_flow_rows``); goal ≤ 10× the GD run alone.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from implicit_bias import bench


def _save(res: dict, out: Path) -> None:
    (out / "gpu-check.json").write_text(json.dumps(res, indent=2))


def reference(tmp: Path, baseline_runs: int, say, device: str = "cuda") -> dict:
    cfg = bench.reference_config()
    path = bench._write(cfg, tmp / "reference.yaml")
    ours = bench.time_ours(path, tmp / "out-ref", device, 1, 1)
    n_runs = math.prod(len(v) for v in cfg["sweep"].values())
    sub = bench.reference_config(runs=baseline_runs)
    k = math.prod(len(v) for v in sub["sweep"].values())
    say(f"baseline loop on {k} of {n_runs} runs …")
    sub_path = bench._write(sub, tmp / "reference-sub.yaml")
    total, _ = bench.best_of(bench.baseline_command(sub_path, device), 1)
    imp, _ = bench.best_of(
        [sys.executable, "-c", f"import torch; torch.zeros(1, device={device!r})"], 1
    )
    base_sub = total - imp
    base = base_sub * n_runs / k
    return {
        "runs": n_runs,
        "ours": ours,
        "baseline_measured_runs": k,
        "baseline_measured_s": base_sub,
        "baseline_scaled_s": base,
        "speedup": base / ours["time_s"],
        "goal_100x": base / ours["time_s"] >= 100,
    }


def syncs(steps: int = 60, runs: int = 64) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from implicit_bias.config import load_config
    from implicit_bias.engine import Trainer
    from implicit_bias.sweep import make_plan

    raw = bench.phase_diagram_config(runs, steps)
    raw["train"] = {**raw["train"], "device": "cuda", "lr_units": "absolute"}
    raw["sweep"]["train.lr"] = [round(0.1 * (i + 1), 2) for i in range(32)]
    raw["metrics"] = {"every": steps, "sharpness": False}
    plan = make_plan(load_config(raw))
    Trainer(plan.runs).train()  # warm-up
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        Trainer(plan.runs).train()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    ev = prof.key_averages()
    count = {
        "cudaStreamSynchronize": sum(e.count for e in ev if e.key == "cudaStreamSynchronize"),
        "memcpy_htod": sum(e.count for e in ev if "HtoD" in e.key),
        "memcpy_dtoh": sum(e.count for e in ev if "DtoH" in e.key),
    }
    return {"runs": len(plan.runs), "steps": steps, "wall_s": wall, **count}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--baseline-runs", type=int, default=16)
    ap.add_argument("--pd-runs", type=int, default=1024)
    ap.add_argument("--pd-steps", type=int, default=1000)
    ap.add_argument("--cnn-runs", type=int, default=32)
    ap.add_argument("--cnn-steps", type=int, default=50)
    ap.add_argument("--flow-runs", type=int, default=16)
    ap.add_argument("--flow-steps", type=int, default=100)
    ap.add_argument("--skip", nargs="*", default=[], help="stages: syncs phase reference cnn flow")
    # cpu: the same stages at small sizes, to test this script's plumbing without a GPU
    # (tests/test_bench.py); the profiler's sync count is CUDA-only and skipped there
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = ap.parse_args()
    dev = args.device
    args.out.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    res: dict = {"machine": bench.machine(dev)}
    say("matmul peak …")
    res["peak_gflops"] = peak = bench.matmul_peak(dev)
    _save(res, args.out)
    with tempfile.TemporaryDirectory(prefix="ib-gpu-") as tmp:
        tmp_path = Path(tmp)
        if "syncs" not in args.skip and dev == "cuda":
            say("host syncs over 60 steps (profiler) …")
            res["syncs"] = syncs()
            _save(res, args.out)
        if "phase" not in args.skip:
            res["phase_diagram"] = bench.phase_diagram_rows(
                tmp_path, dev, args.pd_runs, args.pd_steps, peak, 1, 1, say
            )
            for row in res["phase_diagram"]:
                row["goal_50pct_peak"] = row["engine_pct_peak"] >= 50
            _save(res, args.out)
        if "reference" not in args.skip:
            say("reference workload: ours …")
            res["reference"] = reference(tmp_path, args.baseline_runs, say, dev)
            _save(res, args.out)
        if "cnn" not in args.skip:
            imp, _ = bench.best_of(
                [sys.executable, "-c", f"import torch; torch.zeros(1, device={dev!r})"], 1
            )
            row = bench.cnn_rows(tmp_path, dev, args.cnn_runs, args.cnn_steps, 1, 1, imp, say)
            row["goal_20x"] = max(row["speedup_loop"], row["speedup_vmap"]) >= 20
            res["cnn"] = row
            _save(res, args.out)
        if "flow" not in args.skip:
            row = bench.central_flow_rows(tmp_path, dev, args.flow_runs, args.flow_steps, 1, 1, say)
            row["goal_10x"] = row["engine_ratio"] <= 10
            res["central_flow"] = row
            _save(res, args.out)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
