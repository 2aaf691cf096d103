"""Engine time of bench's MLP rows under two source trees, alternated (same machine).

A "not slower than before" check: each round runs ``implicit-bias run`` on the
reference sweep (linear), its ReLU twin and the compute-bound case with the
``before`` tree and the ``after`` tree in turn (the order flips every round, so
a slow spell of a shared machine hits both), and records the training's own
time (``train_seconds``) and the wall time of ``run``. Each tree builds its
configs with its own ``bench`` module::

    git worktree add --detach /tmp/before <rev>
    python benchmarks/ab_engine.py --before /tmp/before/src --after src --rounds 6
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = ("reference", "reference_relu", "compute_bound")
_CONFIG = r"""
import sys, yaml
from implicit_bias import bench
row = sys.argv[1]
if row == "compute_bound":
    cfg = bench.compute_bound_config(4, 100)
else:
    cfg = bench.reference_config(64, 1000)
    cfg["model"]["activation"] = "relu" if row == "reference_relu" else "linear"
print(yaml.safe_dump(cfg))
"""
_ENGINE = r"""
import sys
from pathlib import Path
from implicit_bias import bench
print(bench.engine_seconds(Path(sys.argv[1])))
"""


def _py(src: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": src}
    done = subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[list[float]]]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="src folder of the older tree")
    ap.add_argument("--after", required=True, help="src folder of the newer tree")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated of {ROWS}")
    args = ap.parse_args(argv)
    trees = {"before": args.before, "after": args.after}
    out: dict[str, dict[str, list[list[float]]]] = {v: {} for v in trees}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for r in range(args.rounds):
            for row in args.rows.split(","):
                order = list(trees.items())
                for name, src in order if r % 2 == 0 else order[::-1]:
                    cfg = d / f"{name}-{row}.yaml"
                    cfg.write_text(_py(src, "-c", _CONFIG, row))
                    folder = d / f"out-{name}-{row}-{r}"
                    t = time.perf_counter()
                    _py(src, "-m", "implicit_bias", "run", str(cfg), "--out", str(folder), "-q")
                    wall = time.perf_counter() - t
                    engine = float(_py(src, "-c", _ENGINE, str(folder)))
                    out[name].setdefault(row, []).append([round(engine, 3), round(wall, 3)])
                    print(
                        f"round {r} {row} {name}: engine {engine:.2f} s, run {wall:.2f} s",
                        file=sys.stderr,
                        flush=True,
                    )
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
