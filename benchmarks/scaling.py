"""How the engine's time scales with runs, steps, width and n around the reference workload.

Each point is the reference workload of ``benchmarks/reference.yaml`` with one
knob changed, run in this process with :func:`implicit_bias.run` (after one
warm-up run, so imports and first-call costs are out) and timed as the best of
``--repeats``. Two series: the reference itself (a deep *linear* net, which
the engine runs in matrix-chain order) and the same workload with ReLU (the
general layer-by-layer path). Prints a Markdown table and writes
``scaling.json`` and ``scaling.png`` next to this file::

    python benchmarks/scaling.py [--repeats 2] [--device cpu] [--plot-only]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
AXES = {
    "runs": [16, 64, 256],
    "steps": [250, 500, 1000, 2000],
    "width": [32, 64, 128],
    "n": [64, 128, 512],
}


ACTIVATIONS = ["linear", "relu"]


def point(axis: str, value: int, activation: str = "linear") -> dict:
    """The reference config with ``axis`` set to ``value`` (and the activation)."""
    from implicit_bias.bench import reference_config

    cfg = reference_config(runs=value if axis == "runs" else 64)
    cfg = copy.deepcopy(cfg)
    cfg["model"]["activation"] = activation
    if axis == "steps":
        cfg["train"]["steps"] = value
    elif axis == "width":
        cfg["model"]["width"] = value
    elif axis == "n":
        cfg["data"]["n_train"] = value
    return cfg


def measure(cfg: dict, device: str, repeats: int, tmp: Path) -> tuple[float, int]:
    """Best wall time of ``implicit_bias.run`` on ``cfg`` over ``repeats`` fresh folders,
    and the number of diverged runs (they stop computing, so they make a point cheaper)."""
    import implicit_bias as ib

    best, diverged = float("inf"), 0
    for i in range(repeats):
        out = tmp / f"{time.monotonic_ns()}-{i}"
        t0 = time.perf_counter()
        tree = ib.run(cfg, out=out, device=device)
        best = min(best, time.perf_counter() - t0)
        diverged = int((tree["group_000"]["phase"].values == "diverged").sum())
    return best, diverged


def plot(rows: list[dict], path: Path) -> None:
    """Time against each knob (log-log), with a line ∝ the FLOPs through the reference point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(AXES), figsize=(4 * len(AXES), 3.6))
    for ax, name in zip(axes, AXES, strict=True):
        for act, style in zip(ACTIVATIONS, ("o-", "s-"), strict=True):
            pts = [r for r in rows if r["axis"] == name and r.get("activation", "linear") == act]
            if not pts:
                continue
            x = [r["value"] for r in pts]
            ax.loglog(x, [r["time_s"] for r in pts], style, label=act)
            ref = next((r for r in pts if r["reference"]), pts[0])
            flops = [ref["time_s"] * r["gflop"] / ref["gflop"] for r in pts]
            ax.loglog(x, flops, ":", color=ax.lines[-1].get_color(), label=f"∝ FLOPs ({act})")
        ax.set_xlabel(name)
        ax.set_ylabel("seconds")
        ax.set_xticks(x, [str(v) for v in x])
        ax.minorticks_off()
        ax.legend(fontsize=8)
    fig.suptitle("implicit-bias run: reference workload with one knob changed (linear / ReLU)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    """Measure every point, print the table, write scaling.json and scaling.png."""
    from implicit_bias.bench import reference_config, workload_flops

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--plot-only", action="store_true", help="redraw from scaling.json")
    args = ap.parse_args(argv)
    if args.plot_only:
        plot(json.loads((HERE / "scaling.json").read_text()), HERE / "scaling.png")
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="ib-scaling-") as tmp:
        measure(reference_config(runs=2, steps=20), args.device, 1, Path(tmp))  # warm-up
        for act in ACTIVATIONS:
            ref = point("runs", 64, act)
            for axis, values in AXES.items():
                for value in values:
                    cfg = point(axis, value, act)
                    t, diverged = measure(cfg, args.device, args.repeats, Path(tmp))
                    runs = len(cfg["sweep"]["train.lr"]) * len(cfg["sweep"]["seed"])
                    steps = cfg["train"]["steps"]
                    rows.append(
                        {
                            "activation": act,
                            "axis": axis,
                            "value": value,
                            "reference": cfg == ref,
                            "diverged": diverged,
                            "time_s": t,
                            "us_per_run_step": 1e6 * t / (runs * steps),
                            "gflop": workload_flops(cfg) / 1e9,
                            "gflops": workload_flops(cfg) / 1e9 / t,
                        }
                    )
                    print(f"{act} {axis}={value}: {t:.2f} s ({diverged} diverged)", flush=True)
    (HERE / "scaling.json").write_text(json.dumps(rows, indent=1))
    plot(rows, HERE / "scaling.png")
    print(
        "\n| activation | knob | value | time (s) | µs per run-step | effective GFLOP/s "
        "| diverged |\n|---|---|---:|---:|---:|---:|---:|"
    )
    for r in rows:
        mark = " (ref)" if r["reference"] else ""
        print(
            f"| {r['activation']} | {r['axis']} | {r['value']}{mark} | {r['time_s']:.2f} | "
            f"{r['us_per_run_step']:.1f} | {r['gflops']:.1f} | {r['diverged']} |"
        )


if __name__ == "__main__":
    main()
