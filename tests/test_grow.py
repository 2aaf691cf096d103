"""Issue 21, item 4: a sweep can grow. New values of swept keys added to a finished
folder run only the new runs, and the folder then equals a fresh run of the whole
sweep; any other change is still refused."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import implicit_bias as ib
from implicit_bias import engine
from implicit_bias._errors import UserInputError

BASE = {
    "name": "grow",
    "data": {"kind": "overlap", "n_train": 16, "n_test": 20, "d": 4},
    "model": {"depth": 2, "width": 8, "activation": "relu"},
    "train": {"loss": "logistic", "steps": 6, "dtype": "float64"},
    "metrics": {"every": 3, "sharpness": {"iters": 4}},
    "store": {"chunk_runs": 2},
}
FIRST = {**BASE, "sweep": {"train.lr": [0.1, 0.3], "seed": [0]}}
GROWN = {**BASE, "sweep": {"train.lr": [0.1, 0.3], "seed": [0, 1]}}


def _by_run(tree) -> dict[str, np.ndarray]:
    ds = tree if isinstance(tree, xr.Dataset) else tree["group_000"].to_dataset()
    return {str(k): np.asarray(ds[k].values) for k in ds.data_vars if "run" in ds[k].dims}


def test_grown_sweep_trains_only_new_runs_and_equals_a_fresh_run(tmp_path, monkeypatch):
    out = tmp_path / "out"
    ib.run(FIRST, out=out)
    trained: list[int] = []
    real = engine.Trainer.__init__

    def counting(self, runs, *a, **kw):
        trained.append(len(runs))
        real(self, runs, *a, **kw)

    monkeypatch.setattr(engine.Trainer, "__init__", counting)
    grown = _by_run(ib.run(GROWN, out=out))
    assert sum(trained) == 2  # 4 runs, 2 of them already in the folder
    monkeypatch.setattr(engine.Trainer, "__init__", real)
    fresh = _by_run(ib.run(GROWN, out=tmp_path / "fresh"))
    assert sorted(grown) == sorted(fresh)
    for k, v in fresh.items():
        if v.dtype.kind == "f":
            np.testing.assert_allclose(grown[k], v, rtol=1e-12, atol=1e-12, err_msg=k)
        else:
            np.testing.assert_array_equal(grown[k], v, err_msg=k)
    assert ib.open_results(out)["group_000"].sizes["run"] == 4


def test_growth_with_another_change_is_still_refused(tmp_path):
    out = tmp_path / "out"
    ib.run(FIRST, out=out)
    changed = {**GROWN, "train": {**BASE["train"], "steps": 7}}
    with pytest.raises(UserInputError, match="another config"):
        ib.run(changed, out=out)
    shrunk = {**BASE, "sweep": {"train.lr": [0.1], "seed": [0]}}
    with pytest.raises(UserInputError, match="another config"):
        ib.run(shrunk, out=out)


@pytest.mark.slow
def test_growth_of_a_shape_key_regroups_and_equals_a_fresh_run(tmp_path):
    first = {**BASE, "store": {"chunk_runs": 1}, "sweep": {"model.width": [16], "train.lr": [0.1]}}
    grown = {**first, "sweep": {"model.width": [8, 16], "train.lr": [0.1, 0.3]}}
    out = tmp_path / "out"
    ib.run(first, out=out)
    tree = ib.run(grown, out=out)
    fresh = ib.run(grown, out=tmp_path / "fresh")
    assert sorted(tree.children) == sorted(fresh.children) == ["group_000", "group_001"]
    for g in tree.children:
        a, b = _by_run(tree[g].to_dataset()), _by_run(fresh[g].to_dataset())
        for k, v in b.items():
            if v.dtype.kind == "f":
                np.testing.assert_allclose(a[k], v, rtol=1e-12, atol=1e-12, err_msg=k)
            else:
                np.testing.assert_array_equal(a[k], v, err_msg=k)
    assert sorted(p.name for p in (out / "chunks").glob("*.nc")) == sorted(
        p.name for p in (tmp_path / "fresh" / "chunks").glob("*.nc")
    )
