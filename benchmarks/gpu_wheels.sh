#!/usr/bin/env bash
# Wheels the device image lacks (it has torch, numpy, scipy, xarray, h5py, typer, rich,
# pyyaml, scikit-learn, matplotlib, pytest, pytest-xdist, psutil): pydantic and h5netcdf.
# Versions as in the project venv (pydantic pins pydantic-core exactly). Run here (not on
# the device), from the repository root; then carry ".whl".
set -euo pipefail
ex=$(git rev-parse --git-path info/exclude)
grep -qx '/.whl/' "$ex" 2>/dev/null || echo '/.whl/' >>"$ex"
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 h5netcdf==1.8.2
ls -la .whl
