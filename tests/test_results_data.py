"""A results folder stores each distinct data set once (results_data).

Runs on different data (a swept ``data.seed``) used to carry one copy of the
data per run in every chunk: 1.5 GB per chunk of ten runs of Frei et al.'s full
recipe, 1.2 GB of it repeated test sets. Now each distinct set sits once on a
``draw`` dim with ``data_draw`` per run; folders in the old layout still read.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import implicit_bias as ib
from implicit_bias import store
from implicit_bias.config import load_config
from implicit_bias.data import fingerprint_arrays, make_dataset
from implicit_bias.results_data import DATA_VARS, merge_data, run_data

BASE = {
    "name": "draws",
    "data": {"kind": "overlap", "n_train": 12, "n_test": 30, "d": 5},
    "model": {"depth": 2, "width": 6, "activation": "relu"},
    "train": {"loss": "logistic", "steps": 4, "dtype": "float64"},
    "metrics": {"every": 2},
    "store": {"chunk_runs": 4},  # chunk 0 holds runs of both draws
    "sweep": {"data.seed": [0, 1], "train.lr": [0.1, 0.2, 0.3]},
}


def _expected(cfg: dict, seed: int) -> dict[str, np.ndarray]:
    data = make_dataset(load_config({**cfg, "data": {**cfg["data"], "seed": seed}}).data)
    return {name: np.asarray(getattr(data, name)) for name in DATA_VARS}


def _check_per_run(ds: xr.Dataset, cfg: dict) -> None:
    seeds = np.asarray(ds["data.seed"].values)
    want = {int(s): _expected(cfg, int(s)) for s in set(seeds.tolist())}
    for name in DATA_VARS:
        got = run_data(ds, name)
        assert got.shape[0] == ds.sizes["run"]
        for i, s in enumerate(seeds.tolist()):
            np.testing.assert_array_equal(got[i], want[int(s)][name], err_msg=name)


def test_each_distinct_data_set_is_stored_once_per_chunk_and_per_group(tmp_path):
    out = tmp_path / "out"
    tree = ib.run(BASE, out=out)
    ds = tree["group_000"].to_dataset()
    # 6 runs on 2 data sets: two copies, not six
    assert ds["X_train"].dims == ("draw", "sample", "feature") and ds.sizes["draw"] == 2
    assert ds["data_draw"].dims == ("run",)
    assert ds.attrs["data_fingerprint"] == "per-draw"
    _check_per_run(ds, BASE)
    # the fingerprints name the data sets the folder keeps under data/
    fps = [str(f) for f in ds["draw_fingerprint"].values]
    assert sorted(p.stem for p in (out / "data").glob("*.npz")) == sorted(fps)
    sets_per_chunk = []
    for path in sorted((out / "chunks").glob("*.nc")):  # within a chunk, too, once per set
        chunk, why = store.read_chunk(path)
        assert chunk is not None, why
        n_sets = len(set(np.asarray(chunk["data.seed"].values).tolist()))
        assert chunk["X_train"].sizes.get("draw", 1) == n_sets
        assert "run" not in chunk["X_train"].dims
        _check_per_run(chunk, BASE)
        sets_per_chunk.append(n_sets)
    assert sets_per_chunk == [2, 1]
    # the xarray spelling of run_data
    np.testing.assert_array_equal(
        ds["X_train"].isel(draw=ds["data_draw"]).transpose("run", ...).values,
        run_data(ds, "X_train"),
    )


def test_shared_data_keeps_its_layout(tmp_path):
    cfg = {**BASE, "sweep": {"train.lr": [0.1, 0.2, 0.3, 0.4]}}
    ds = ib.run(cfg, out=tmp_path / "out")["group_000"].to_dataset()
    assert ds["X_train"].dims == ("sample", "feature") and "data_draw" not in ds
    assert "draw" not in ds.dims
    assert run_data(ds, "y_test").shape == (4, 30)
    assert ds.attrs["data_fingerprint"] == fingerprint_arrays(_expected(cfg, 0))


def test_a_selection_of_runs_reads_its_own_draws(tmp_path):
    ds = ib.run(BASE, out=tmp_path / "out")["group_000"].to_dataset()
    pick = ds.isel(run=np.flatnonzero(ds["data.seed"].values == 1))
    np.testing.assert_array_equal(run_data(pick, "X_test")[0], _expected(BASE, 1)["X_test"])


def _old_layout(chunk: xr.Dataset) -> xr.Dataset:
    """A chunk as written before the draw layout: every data array with a run dim."""
    per_run = {name: run_data(chunk, name) for name in DATA_VARS}
    old = chunk.drop_vars(["data_draw", "draw_fingerprint", "draw", *DATA_VARS], errors="ignore")
    dims = {"X_train": ("sample", "feature"), "y_train": ("sample",)}
    dims |= {"X_test": ("test_sample", "feature"), "y_test": ("test_sample",)}
    old = old.assign({n: (("run", *dims[n]), per_run[n]) for n in DATA_VARS})
    old.attrs = {**chunk.attrs, "data_fingerprint": "per-run"}
    return old


def test_folders_in_the_old_per_run_layout_still_read(tmp_path):
    out = tmp_path / "out"
    ib.run(BASE, out=out)
    for path in sorted((out / "chunks").glob("*.nc")):
        chunk, _ = store.read_chunk(path)
        assert chunk is not None
        plan = store.ChunkPlan(
            int(chunk.attrs["group"]), int(chunk.attrs["chunk"]), tuple(chunk["run"].values)
        )
        store.write_chunk(out, plan, _old_layout(chunk))  # re-signed, as the old code did
        chunk, why = store.read_chunk(path)
        assert chunk is not None and "run" in chunk["X_train"].dims, why
    ds = ib.open_results(out)["group_000"].to_dataset()
    assert ds.sizes["draw"] == 2
    _check_per_run(ds, BASE)


def test_merge_of_every_layout_keeps_one_copy_per_set():
    rng = np.random.default_rng(0)
    sets = [
        {n: rng.normal(size=(3, 2) if n.startswith("X") else (3,)) for n in DATA_VARS}
        for _ in range(3)
    ]
    dims = {"X_train": ("sample", "feature"), "y_train": ("sample",)}
    dims |= {"X_test": ("test_sample", "feature"), "y_test": ("test_sample",)}

    def shared(runs, s):
        ds = xr.Dataset({n: (dims[n], sets[s][n]) for n in DATA_VARS}, coords={"run": runs})
        ds["loss"] = ("run", np.asarray(runs, dtype=float))
        ds.attrs["data_fingerprint"] = fingerprint_arrays(sets[s])
        return ds

    def per_run(runs, which):
        ds = xr.Dataset(
            {n: (("run", *dims[n]), np.stack([sets[s][n] for s in which])) for n in DATA_VARS},
            coords={"run": runs},
        )
        ds["loss"] = ("run", np.asarray(runs, dtype=float))
        ds.attrs["data_fingerprint"] = "per-run"
        return ds

    parts = [per_run([4, 5], [2, 0]), shared([0, 1], 0), shared([2, 3], 1)]
    merged = merge_data(parts, store._concat_runs)
    assert merged.sizes["draw"] == 3 and merged["run"].values.tolist() == [0, 1, 2, 3, 4, 5]
    which = [0, 0, 1, 1, 2, 0]
    for n in DATA_VARS:
        np.testing.assert_array_equal(run_data(merged, n), np.stack([sets[s][n] for s in which]))
    np.testing.assert_array_equal(merged["loss"].values, np.arange(6.0))
    # the same order whatever order the chunks come in
    again = merge_data(parts[::-1], store._concat_runs)
    xr.testing.assert_identical(merged, again)
    one = merge_data([shared([0, 1], 2)], store._concat_runs)
    assert one["X_train"].dims == ("sample", "feature") and "data_draw" not in one


def test_run_data_refuses_other_names(tmp_path):
    ds = ib.run({**BASE, "sweep": {"train.lr": [0.1]}}, out=tmp_path / "o")["group_000"]
    with pytest.raises(KeyError, match="X_train"):
        run_data(ds, "final_W1")
    assert ib.run_data(ds, "X_train").shape == (1, 12, 5)


def test_a_grown_sweep_of_data_seeds_equals_a_fresh_run(tmp_path):
    grown_cfg = {**BASE, "sweep": {"data.seed": [0, 1, 2], "train.lr": [0.1, 0.2, 0.3]}}
    out = tmp_path / "out"
    ib.run(BASE, out=out)
    grown = ib.run(grown_cfg, out=out)["group_000"].to_dataset()
    fresh = ib.run(grown_cfg, out=tmp_path / "fresh")["group_000"].to_dataset()
    assert grown.sizes["draw"] == 3
    xr.testing.assert_allclose(grown, fresh, rtol=1e-12, atol=1e-12)
    _check_per_run(grown, grown_cfg)


def test_a_forged_draw_index_is_a_damaged_chunk(tmp_path):
    """A chunk re-signed with a data_draw outside its draws is refused by name."""
    out = tmp_path / "out"
    ib.run(BASE, out=out)
    path = sorted((out / "chunks").glob("*.nc"))[0]
    chunk, _ = store.read_chunk(path)
    assert chunk is not None and "draw" in chunk.dims
    forged = chunk.assign(data_draw=("run", np.full(chunk.sizes["run"], 7, dtype=np.int64)))
    plan = store.ChunkPlan(
        int(chunk.attrs["group"]), int(chunk.attrs["chunk"]), tuple(chunk["run"].values)
    )
    store.write_chunk(out, plan, forged)
    got, why = store.read_chunk(path)
    assert got is None and "data_draw" in why
    with pytest.raises(ib.UserInputError, match="data_draw"):
        ib.open_results(out)
