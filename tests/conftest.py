"""Test-session settings.

Under ``pytest -n 2`` two workers share the 2 cores; with torch's default of
one thread per core each, the OpenMP threads oversubscribe the machine and
spin-wait, and tests made of many small kernels run 5-10× slower (measured).
One thread per worker (inherited by the CLI subprocesses) avoids that.
"""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
