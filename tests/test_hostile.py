"""Issue 20: the results folder against a hostile or careless world.

Each numbered case of the issue has a test here: overlapping sweep axes,
edited ``chunking.json``, ``--overwrite`` with new chunk sizes, unsigned or
edited chunk attributes, partial folders, user files beside ours, symlinks
planted in a folder, YAML bombs and deep nesting, enormous sweeps, a full
disk, unwritable report folders and hostile data files. A property test
damages a finished folder at random: the next run either refuses with one
line or ends equal to a clean run.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import implicit_bias as ib
from implicit_bias import plots
from implicit_bias._errors import MAX_MESSAGE, UserInputError
from implicit_bias.config import load_config
from implicit_bias.report import summary_table, write_report
from implicit_bias.store import open_results
from implicit_bias.sweep import make_plan

SRC = Path(__file__).resolve().parents[1] / "src"
# a damaged chunk that is redone warns (tested in test_folder_safety); here the outcome counts
pytestmark = pytest.mark.filterwarnings("ignore::implicit_bias._errors.ChunkWarning")

TINY = {
    "name": "tiny",
    "data": {"kind": "overlap", "n_train": 16, "n_test": 20, "d": 4},
    "model": {"depth": 2, "width": 8, "activation": "linear"},
    "train": {"loss": "logistic", "steps": 6, "dtype": "float64"},
    "metrics": {"every": 3, "sharpness": {"iters": 4}},
    "store": {"chunk_runs": 1},
    "sweep": {"train.lr": [0.1, 0.2, 0.3, 0.4]},
}


def _runs(tree) -> dict[str, np.ndarray]:
    """Every per-run array of a tree's (single) group, keyed by name."""
    ds = tree["group_000"].to_dataset()
    return {str(k): np.asarray(ds[k].values) for k in ds.data_vars if "run" in ds[k].dims}


def _assert_equal_runs(tree, clean: dict[str, np.ndarray]) -> None:
    got = _runs(tree)
    assert sorted(got) == sorted(clean)
    for k, v in clean.items():
        if v.dtype.kind == "f":
            np.testing.assert_allclose(got[k], v, rtol=1e-12, atol=1e-12, err_msg=k)
        else:
            np.testing.assert_array_equal(got[k], v, err_msg=k)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A finished folder of TINY (4 runs, one per chunk) and its per-run arrays."""
    out = tmp_path_factory.mktemp("clean") / "out"
    return out, _runs(ib.run(TINY, out=out))


@pytest.fixture
def folder(clean, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(clean[0], out, symlinks=True)
    return out


@pytest.fixture
def no_figures(monkeypatch):
    """Reports without figures: the folder handling is under test, not matplotlib."""
    monkeypatch.setattr(plots, "FIGURES", {})


def _one_line(err: BaseException | str) -> str:
    text = str(err)
    assert "\n" not in text.strip() and "Traceback" not in text, text
    assert len(text) <= MAX_MESSAGE + 10
    return text


def _cli(*args: str, limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC)]))}

    def limit() -> None:  # runs in the child: a file-size limit, as `ulimit -f`
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run(
        [sys.executable, "-m", "implicit_bias", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        preexec_fn=limit,
    )


# ------------------------------------------------- 1. overlapping sweep axes
@pytest.mark.parametrize(
    "sweep",
    [
        {"train.lr": [0.5, 5.0], "train": [{"steps": 20}]},
        {"train": [{"steps": 20}], "train.lr": [0.5, 5.0]},
        {"model.width": [4, 8], "model": [{"depth": 3}]},
    ],
)
def test_overlapping_sweep_axes_are_refused(sweep):
    with pytest.raises(UserInputError, match="overlap") as err:
        load_config({**TINY, "sweep": sweep})
    _one_line(err.value)


def test_overlapping_sweep_axis_from_set_is_refused():
    with pytest.raises(UserInputError, match="overlap"):
        load_config(TINY, ["sweep.train=[{steps: 20}]"])


# --------------------------------- 2, 9. chunking.json edited, broken or a folder
@pytest.mark.parametrize(
    "record",
    [
        "100",
        *(
            pytest.param(r, marks=pytest.mark.slow)
            for r in ("garbage{", "-1", "{}", '{"chunk_runs": {"0": "x"}}')
        ),
    ],
)
def test_edited_chunking_record_with_a_chunk_missing_is_completed(folder, clean, record):
    (folder / "chunking.json").write_text(record)
    (folder / "chunks" / "g000-c00002.nc").unlink()
    tree = ib.run(TINY, out=folder)
    _assert_equal_runs(tree, clean[1])
    assert len(list((folder / "chunks").glob("*.nc"))) == 4
    assert json.loads((folder / "chunking.json").read_text())["chunk_runs"] == {"0": 1}


@pytest.mark.slow
def test_chunking_record_that_is_a_folder_is_refused_then_repaired(folder, clean):
    (folder / "chunking.json").unlink()
    (folder / "chunking.json").mkdir()
    (folder / "chunks" / "g000-c00002.nc").unlink()
    with pytest.raises(UserInputError, match=r"chunking\.json") as err:
        ib.run(TINY, out=folder)
    _one_line(err.value)
    _assert_equal_runs(ib.run(TINY, out=folder, overwrite=True), clean[1])


# ------------------- 3, 6. --overwrite: new chunk sizes, and only our files removed
def test_overwrite_uses_new_chunk_size_and_keeps_the_users_files(folder, no_figures):
    write_report(folder)
    (folder / "paper-draft.tmp").write_text("draft")
    (folder / "report" / "MY_NOTES.md").write_text("notes")
    (folder / "chunks" / "notes.txt").write_text("mine")
    cfg = {**TINY, "store": {"chunk_runs": 2}}
    tree = ib.run(cfg, out=folder, overwrite=True)
    assert sum(node.ds.sizes["run"] for node in tree.children.values()) == 4
    assert sorted(p.name for p in (folder / "chunks").glob("*.nc")) == [
        "g000-c00000.nc",
        "g000-c00001.nc",
    ]
    assert json.loads((folder / "chunking.json").read_text())["chunk_runs"] == {"0": 2}
    assert (folder / "paper-draft.tmp").read_text() == "draft"
    assert (folder / "report" / "MY_NOTES.md").read_text() == "notes"
    assert (folder / "chunks" / "notes.txt").read_text() == "mine"
    assert not (folder / "report" / "summary.md").exists()  # ours: removed


# ------------------------------------------ 4. signatures of chunks and config
def test_edited_chunk_attribute_fails_the_checksum(folder):
    with h5py.File(folder / "chunks" / "g000-c00001.nc", "r+") as h:
        cfg = json.loads(h.attrs["group_config"])
        cfg["model"] |= {"activation": "relu", "width": 4096}
        h.attrs["group_config"] = json.dumps(cfg, sort_keys=True)
    with pytest.raises(UserInputError, match="checksum") as err:
        open_results(folder)
    _one_line(err.value)


@pytest.mark.parametrize("attr", ["data_svm_margin", "n_runs"])
def test_edited_data_attributes_fail_the_checksum(folder, attr):
    with h5py.File(folder / "chunks" / "g000-c00000.nc", "r+") as h:
        h.attrs[attr] = 12345.0
    with pytest.raises(UserInputError, match="checksum"):
        open_results(folder)


def test_unsigned_chunk_is_refused_in_a_marked_folder(folder):
    with h5py.File(folder / "chunks" / "g000-c00001.nc", "r+") as h:
        del h.attrs["sha256"]
        del h.attrs["config_hash"]
    with pytest.raises(UserInputError, match="not signed"):
        open_results(folder)


def test_config_edited_under_its_hash_line_without_a_marker_is_refused(folder):
    (folder / ".implicit-bias").unlink()
    text = (folder / "config.yaml").read_text()
    assert "width: 8" in text
    (folder / "config.yaml").write_text(text.replace("width: 8", "width: 4096"))
    with pytest.raises(UserInputError, match="changed") as err:
        open_results(folder)
    _one_line(err.value)
    with pytest.raises(UserInputError, match="lost the record"):
        ib.run(TINY, out=folder)


# ----------------------------------------------------------- 5. partial folders
def test_partial_folder_says_which_runs_are_missing(folder, no_figures):
    (folder / "chunks" / "g000-c00003.nc").unlink()
    (folder / "chunks" / "g000-c00001.nc").unlink()
    tree = open_results(folder)
    assert tree.attrs["n_runs"] == 2 and tree.attrs["n_runs_planned"] == 4
    assert "2 of the 4 planned runs are missing" in summary_table(tree)
    write_report(folder)
    assert "2 of the 4 planned runs are missing" in (folder / "report" / "summary.md").read_text()


# ------------------------------------------------- 7, 8. symbolic links planted
@pytest.mark.parametrize("overwrite", [False, True])
def test_chunks_linked_to_a_users_folder_is_refused_and_untouched(folder, tmp_path, overwrite):
    theirs = tmp_path / "sim"
    theirs.mkdir()
    (theirs / "my_simulation_output.nc").write_text("precious")
    (theirs / "g000-c00000.nc").write_text("also theirs")
    shutil.rmtree(folder / "chunks")
    (folder / "chunks").symlink_to(theirs)
    with pytest.raises(UserInputError, match="symbolic link") as err:
        ib.run(TINY, out=folder, overwrite=overwrite)
    _one_line(err.value)
    assert (theirs / "my_simulation_output.nc").read_text() == "precious"
    assert (theirs / "g000-c00000.nc").read_text() == "also theirs"


def test_report_never_writes_through_a_planted_link(folder, tmp_path, no_figures):
    victim = tmp_path / "victim.csv"
    victim.write_text("keep me")
    (folder / "report").mkdir()
    (folder / "report" / "summary.csv").symlink_to(victim)
    (folder / "report" / "summary.md").symlink_to(victim)
    write_report(folder)
    assert victim.read_text() == "keep me"
    assert not (folder / "report" / "summary.csv").is_symlink()
    assert "lr" in (folder / "report" / "summary.csv").read_text()


def test_report_folder_that_is_a_link_or_a_file_is_refused(folder, tmp_path, no_figures):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder / "report").symlink_to(elsewhere)
    with pytest.raises(UserInputError, match="symbolic link"):
        write_report(folder)
    assert not any(elsewhere.iterdir())
    (folder / "report").unlink()
    (folder / "report").write_text("a file")
    with pytest.raises(UserInputError, match="not a folder") as err:
        write_report(folder)
    _one_line(err.value)


def test_run_never_writes_through_planted_temporary_names(folder, clean, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (folder / "chunks" / "g000-c00001.nc").unlink()
    (folder / "chunking.json").unlink()
    (folder / "chunking.json.tmp").symlink_to(victim)
    for f in (folder / "data").iterdir():
        f.unlink()
        (folder / "data" / (f.name + ".tmp")).symlink_to(victim)
        f.symlink_to(victim)  # the data set's own name, too
    tree = ib.run(TINY, out=folder)
    _assert_equal_runs(tree, clean[1])
    assert victim.read_text() == "keep me"
    assert all(not f.is_symlink() for f in (folder / "data").glob("*.npz"))


@pytest.mark.slow
def test_chunk_that_is_a_link_is_not_read(folder, clean, tmp_path):
    outside = tmp_path / "outside.nc"
    shutil.copy(folder / "chunks" / "g000-c00001.nc", outside)
    (folder / "chunks" / "g000-c00001.nc").unlink()
    (folder / "chunks" / "g000-c00001.nc").symlink_to(outside)
    with pytest.raises(UserInputError, match="not a regular file"):
        open_results(folder)
    _assert_equal_runs(ib.run(TINY, out=folder), clean[1])
    assert outside.is_file()


# ------------------------------------------------ 10. a chunk without its runs
@pytest.mark.parametrize("repair", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_chunk_with_only_group_and_chunk_attributes_is_refused_then_redone(folder, clean, repair):
    path = folder / "chunks" / "g000-c00001.nc"
    path.unlink()
    with h5py.File(path, "w") as h:
        h.attrs["group"] = 0
        h.attrs["chunk"] = 1
    with pytest.raises(UserInputError, match=r"g000-c00001\.nc") as err:
        open_results(folder)
    _one_line(err.value)
    if repair:  # the run redoes it (on main: a KeyError traceback)
        _assert_equal_runs(ib.run(TINY, out=folder), clean[1])


def test_small_chunk_declaring_gigabytes_is_refused_unread(folder):
    import h5netcdf

    path = folder / "chunks" / "g000-c00001.nc"
    path.unlink()
    with h5netcdf.File(path, "w") as f:  # 8 KB on disk, 3.2 GB declared
        f.dimensions = {"run": 1, "a": 20000, "b": 20000}
        f.create_variable("run", ("run",), dtype="i8")[:] = [1]
        f.create_variable("x", ("run", "a", "b"), dtype="f8", compression="gzip")
        f.attrs["group"], f.attrs["chunk"] = 0, 1
    with pytest.raises(UserInputError, match="declares") as err:
        open_results(folder)
    _one_line(err.value)


# ---------------------------------------------- 11, 12. YAML bombs and nesting
@pytest.mark.parametrize("levels", [7, 9])
def test_yaml_alias_bomb_is_refused_in_one_short_line(tmp_path, levels):
    p = tmp_path / "bomb.yaml"
    text = "name: bomb\ndata: {kind: overlap}\n"
    text += "a0: &a0 [" + ", ".join(["lol"] * 10) + "]\n"
    for i in range(1, levels):
        text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n"
    p.write_text(text)
    assert len(text) < 1000
    with pytest.raises(UserInputError, match="alias") as err:
        load_config(p)
    _one_line(err.value)


def test_alias_bomb_in_set_is_refused():
    value = "[" + ", ".join(["&a [1, 2]"] + ["*a"] * 2000) + "]"
    with pytest.raises(UserInputError, match="alias"):
        load_config(TINY, [f"train.lr={value}"])


def test_anchors_and_merge_keys_still_work(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        "base: &b {kind: overlap, n_train: 16, n_test: 20, d: 4}\ndata:\n  <<: *b\n  d: 5\n"
    )
    with pytest.raises(UserInputError, match="unknown key 'base'"):
        load_config(p)
    p.write_text("data:\n  <<: {kind: overlap, d: 4}\n  d: 5\n")
    assert load_config(p).data.d == 5  # a merge key is not a duplicate key
    p.write_text("data: {kind: overlap}\ntrain: {steps: 1:20}\n")
    with pytest.raises(UserInputError, match=r"train\.steps"):  # not YAML 1.1's base-60 80
        load_config(p)


@pytest.mark.parametrize("n", [100, 1000, 100_000])
def test_deep_nesting_is_refused_in_one_line(tmp_path, n):
    p = tmp_path / "deep.yaml"
    p.write_text("data: {kind: overlap}\nx: " + "[" * n + "]" * n + "\n")
    with pytest.raises(UserInputError) as err:
        load_config(p)
    _one_line(err.value)
    with pytest.raises(UserInputError):
        load_config(TINY, ["train.lr=" + "[" * n + "]" * n])


# --------------------------------------------------------- 13. enormous sweeps
def test_sweep_of_1e21_runs_is_refused_by_counting():
    cfg = {**TINY, "sweep": {"train.lr": [0.1 * (i + 1) for i in range(1000)]}}
    cfg["sweep"] |= {"seed": list(range(1000)), "data.seed": list(range(1000))}
    cfg["sweep"] |= {"model.init_scale": [0.5 + i for i in range(1000)]}
    cfg["sweep"] |= {"metrics.phase": [{"eos_rise": 1e-3 * (i + 1)} for i in range(1000)]}
    cfg["sweep"] |= {"store": [{"chunk_runs": 1 + i} for i in range(1000)]}
    cfg["sweep"] |= {"name": [f"n{i}" for i in range(1000)]}
    with pytest.raises(UserInputError, match="runs") as err:
        load_config(cfg)
    _one_line(err.value)


def test_sweep_over_1e9_shape_combinations_is_refused():
    cfg = {**TINY, "sweep": {"model.width": list(range(1, 1001))}}
    cfg["sweep"] |= {"train.steps": list(range(1, 1001)), "data.n_test": list(range(1, 1001))}
    with pytest.raises(UserInputError, match="runs"):
        load_config(cfg)
    cfg["sweep"]["data.n_test"] = list(range(1, 11))  # 10⁵ runs, all of other shapes
    with pytest.raises(UserInputError, match="combinations") as err:
        load_config(cfg)
    _one_line(err.value)


def test_sweep_of_1e6_runs_plans_without_enumerating():
    cfg = {**TINY, "sweep": {"train.lr": [1e-3 * (i + 1) for i in range(1000)]}}
    cfg["sweep"] |= {"seed": list(range(1000))}
    plan = make_plan(load_config(cfg))
    assert len(plan.runs) == 10**6 and len(plan.groups) == 1
    assert plan.runs[999_999].config.seed == 999


def test_long_number_lists_read_in_bulk_mean_what_yaml_says(tmp_path):
    seeds = list(range(3000))
    rates = [1e-3 * (i + 1) for i in range(1500)]
    p = tmp_path / "c.yaml"
    text = yaml.safe_dump(
        {"data": {"kind": "overlap"}, "sweep": {"seed": seeds, "train.lr": rates}},
        default_flow_style=None,
    )
    p.write_text(text)
    cfg = load_config(p)
    assert cfg.sweep["seed"] == seeds and cfg.sweep["train.lr"] == rates
    assert [type(v) for v in cfg.sweep["seed"][:2]] == [int, int]
    # a spelling only YAML knows (1_000, .5) takes the YAML path, with the same meaning
    p.write_text(text.replace("2999]", "2999, 1_000_000]"))
    assert load_config(p).sweep["seed"][-1] == 1_000_000


def test_papercuts_name_workers_and_string_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserInputError, match="plain folder name"):
        ib.run({**TINY, "name": "../../x"})
    assert not (tmp_path.parent / "x").exists()
    with pytest.raises(UserInputError, match="workers"):
        ib.run(TINY, out=tmp_path / "w", workers=0)
    with pytest.raises(UserInputError, match="swept"):  # one override, not its characters
        load_config(TINY, "train.lr=0.5")


def test_invalid_value_in_a_long_independent_list_is_named():
    cfg = {**TINY, "sweep": {"seed": [*range(100_000), -1]}}
    with pytest.raises(UserInputError, match="seed") as err:
        load_config(cfg)
    _one_line(err.value)


# --------------------------------------------------------------- 14. disk full
def test_disk_full_is_one_line_and_loses_nothing(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "out"
    r = _cli("run", str(cfg), "--out", str(out), "-q", limit_bytes=20_000)
    assert r.returncode == 2, r.stderr
    line = _one_line(r.stderr)
    assert "disk full" in line
    assert not list(out.rglob("*.tmp"))


# ------------------------------------------------------------ 15. the report
def test_report_in_a_folder_with_a_non_utf8_name_is_whole(clean, tmp_path, no_figures):
    out = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9-results"))
    shutil.copytree(clean[0], out, symlinks=True)
    write_report(out)
    text = (out / "report" / "summary.md").read_bytes()
    assert text.rstrip().endswith(b"|") and b"## Runs" in text


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions")
def test_report_in_a_read_only_folder_is_one_line(folder, no_figures):
    os.chmod(folder, 0o555)
    try:
        with pytest.raises(UserInputError, match="cannot write the report") as err:
            write_report(folder)
        _one_line(err.value)
    finally:
        os.chmod(folder, 0o755)


# ------------------------------------------------------------------- 16. data
def _file_cfg(path: Path) -> dict:
    return {**TINY, "data": {"kind": "file", "path": str(path)}, "sweep": {}}


def test_csv_with_a_byte_order_mark_keeps_its_first_row(tmp_path):
    rows = [[1.5, -0.5, 1], [0.5, 0.25, -1], [-1.0, 2.0, 1], [2.0, 1.0, -1]]
    p = tmp_path / "excel.csv"
    p.write_bytes(b"\xef\xbb\xbf" + "\n".join(",".join(map(str, r)) for r in rows).encode())
    plan = make_plan(load_config(_file_cfg(p)))
    X = plan.datasets[0].X_train
    assert X.shape[0] + plan.datasets[0].X_test.shape[0] == 4


@pytest.mark.parametrize("first", ["NA,1.0,1", "0x10,1.0,1"])
def test_csv_with_a_bad_first_row_is_refused_not_taken_as_header(tmp_path, first):
    p = tmp_path / "d.csv"
    p.write_text(first + "\n0.5,0.25,-1\n-1.0,2.0,1\n2.0,1.0,-1\n")
    with pytest.raises(UserInputError, match="line 1"):
        make_plan(load_config(_file_cfg(p)))


def test_huge_finite_inputs_are_refused_before_running(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((12, 3)) * 1e200
    p = tmp_path / "big.npz"
    np.savez(p, X_train=X, y_train=np.where(rng.standard_normal(12) > 0, 1.0, -1.0))
    with pytest.raises(UserInputError, match="normalize") as err:
        make_plan(load_config(_file_cfg(p)))
    _one_line(err.value)


# --------------------------------------------------- the folder under random damage
_TOOL_FILES = [
    ".implicit-bias",
    "config.yaml",
    "chunking.json",
    "chunks/g000-c00000.nc",
    "chunks/g000-c00001.nc",
    "chunks/g000-c00003.nc",
]
_ATTRS = ["group", "chunk", "runs", "config_hash", "group_config", "data_fingerprint", "sha256"]


def _damage(out: Path, victim: Path, kind: str, name: str, data: bytes, attr: str) -> None:
    p = out / name
    if kind == "delete":
        p.unlink()
    elif kind == "truncate":
        p.write_bytes(p.read_bytes()[: len(data) % max(p.stat().st_size, 1)])
    elif kind == "garbage":
        p.write_bytes(data)
    elif kind == "flip":
        blob = bytearray(p.read_bytes())
        i = int.from_bytes(data[:4].ljust(4, b"\0"), "little") % len(blob)
        blob[i] ^= 0x5A
        p.write_bytes(bytes(blob))
    elif kind == "link":
        p.unlink()
        p.symlink_to(victim)
    elif kind == "attr" and p.suffix == ".nc":
        with h5py.File(p, "r+") as h:
            if attr in h.attrs and data[:1] == b"d":
                del h.attrs[attr]
            else:
                h.attrs[attr] = data.decode("latin-1") or "x"


@pytest.mark.parametrize(
    "examples", [pytest.param(2, id="few"), pytest.param(40, marks=pytest.mark.slow, id="many")]
)
def test_random_damage_is_refused_in_one_line_or_repaired(clean, tmp_path_factory, examples):
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["delete", "truncate", "garbage", "flip", "link", "attr"]),
                st.sampled_from(_TOOL_FILES),
                st.binary(min_size=1, max_size=40),
                st.sampled_from(_ATTRS),
            ),
            min_size=1,
            max_size=3,
        )
    )
    def check(damages):
        base = tmp_path_factory.mktemp("damaged")
        out = base / "out"
        shutil.copytree(clean[0], out, symlinks=True)
        victim = base / "victim"
        victim.write_text("not yours")
        for kind, name, data, attr in damages:
            if (out / name).is_file() and not (out / name).is_symlink():
                _damage(out, victim, kind, name, data, attr)
        try:
            tree = ib.run(TINY, out=out)
        except UserInputError as err:
            _one_line(err)
        else:
            _assert_equal_runs(tree, clean[1])
        assert victim.read_text() == "not yours"

    check()


# ------------------------------------------------ 13. a bounded time estimate
def test_estimate_of_1e6_runs_trains_a_bounded_probe(monkeypatch):
    # validate measures its time estimate by training: on 10⁶ runs in big chunks
    # it must train a few runs of a chunk, not the chunk (Python memory bounded too)
    import tracemalloc

    from implicit_bias import estimate

    cfg = {k: v for k, v in TINY.items() if k != "store"}  # the automatic chunking
    cfg["sweep"] = {"train.lr": [1e-3 * (i + 1) for i in range(1000)], "seed": list(range(1000))}
    plan = make_plan(load_config(cfg))
    assert len(plan.runs) == 10**6 and plan.chunk_sizes[0] > estimate.PROBE_MAX_RUNS
    sizes: list[int] = []
    real = estimate._probe

    def probe(runs):
        sizes.append(len(runs))
        return real(runs)

    monkeypatch.setattr(estimate, "_probe", probe)
    tracemalloc.start()
    try:
        est = estimate.estimate_seconds(plan)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # one or two timings (no probe starts after PROBE_BUDGET_S), never the whole chunk
    assert 1 <= len(sizes) <= estimate.PROBES and set(sizes) == {estimate.PROBE_MAX_RUNS}
    assert peak < 100 * 2**20
    assert est.scaled and est.probed == 1
    assert est.per_group[0][3] == pytest.approx(10**6 / plan.chunk_sizes[0])
    assert 0 < est.low <= est.seconds <= est.high
    assert f"at most {estimate.PROBE_MAX_RUNS} runs of a chunk" in est.text()


def test_estimate_probes_a_few_groups_and_extrapolates_the_rest(monkeypatch):
    from implicit_bias import estimate

    cfg = {**TINY, "sweep": {"model.width": list(range(2, 42)), "seed": [0, 1]}}
    plan = make_plan(load_config(cfg))
    assert len(plan.groups) == 40
    probed: list[int] = []

    def probe(runs):  # a fixed cost per run: the extrapolation is checked exactly
        probed.append(runs[0].config.model.width)
        return 0.01 * len(runs), 0.1 * len(runs), 1.0 * len(runs)

    monkeypatch.setattr(estimate, "_probe", probe)
    est = estimate.estimate_seconds(plan)
    groups = estimate.PROBE_MAX_GROUPS
    assert len(set(probed)) == groups and {2, 41} <= set(probed)  # both ends of the sweep
    assert est.probed == groups and len(est.per_group) == 40
    assert f"{groups} of 40 groups" in est.text()
    # every group (probed or not) costs its runs × (steps, evals, once) per run
    for step, ev, fixed, chunks in est.per_group:
        assert (step, ev, fixed) == pytest.approx((0.01, 0.1, 1.0))
        assert chunks == 2
    assert est.repeated and "2 times" in est.text()
    # out of time after the first probe: one timing, extrapolated to all, and said so
    monkeypatch.setattr(estimate, "PROBE_BUDGET_S", 0.0)
    probed.clear()
    est = estimate.estimate_seconds(plan)
    assert probed == [2] and est.probed == 1 and not est.repeated
    assert "1 of 40 groups" in est.text() and "timed once" in est.text()
    assert est.per_group[-1][:3] == pytest.approx((0.01, 0.1, 1.0))


# --------------------------------------------------------------- papercuts
def test_empty_out_is_refused_not_the_working_directory(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from implicit_bias.cli import app

    monkeypatch.chdir(tmp_path)
    p = tmp_path / "c.yaml"
    p.write_text(json.dumps(TINY))
    for verb in (["run", str(p)], ["reproduce", "liu2023", "--quick"]):
        res = CliRunner().invoke(app, [*verb, "--out", ""])
        assert res.exit_code == 2, res.output
        assert "--out is empty" in _one_line(res.output.strip())
    with pytest.raises(UserInputError, match="out is empty"):
        ib.run(TINY, out=" ")
    assert sorted(os.listdir(tmp_path)) == ["c.yaml"]  # nothing written here


def test_hint_for_a_swept_key_never_suggests_an_invalid_list():
    cfg = {**TINY, "sweep": {"seed": [0, 1]}}
    with pytest.raises(UserInputError, match="swept") as err:
        load_config(cfg, ["seed=-1"])
    text = _one_line(err.value)
    assert "sweep.seed=[-1]" not in text and "-1 is not a valid seed" in text
    with pytest.raises(UserInputError, match=r"e\.g\. --set 'sweep\.seed=\[3\]'"):
        load_config(cfg, ["seed=3"])


def test_one_training_point_and_endless_trace_probes_are_refused():
    with pytest.raises(UserInputError, match=r"data\.n_train") as err:
        load_config({**TINY, "data": {**TINY["data"], "n_train": 1}})
    assert "single class" in _one_line(err.value)
    with pytest.raises(UserInputError, match=r"data\.n_train"):
        load_config({**TINY, "sweep": {"data.n_train": [16, 1]}})
    load_config({**TINY, "data": {**TINY["data"], "n_train": 2}})  # two points can train
    with pytest.raises(UserInputError, match="probes") as err:
        load_config({**TINY, "metrics": {"trace": {"probes": 10**8}}})
    _one_line(err.value)
    with pytest.raises(UserInputError, match="probes"):
        load_config(TINY, ["metrics.trace.probes=1e8"])


def test_lock_owned_by_another_user_ends_in_one_line(tmp_path, monkeypatch):
    # another user's lock file cannot be opened (EACCES); simulated, since the
    # tests may run as root, whom no permission stops
    import filelock
    from typer.testing import CliRunner

    from implicit_bias.cli import app

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self.lock_file))

    monkeypatch.setattr(filelock.BaseFileLock, "acquire", denied)
    with pytest.raises(UserInputError, match="another user") as err:
        ib.run(TINY, out=tmp_path / "a")
    _one_line(err.value)
    p = tmp_path / "c.yaml"
    p.write_text(json.dumps(TINY))
    res = CliRunner().invoke(app, ["run", str(p), "--out", str(tmp_path / "b"), "-q"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "permission denied" in _one_line(res.output.strip())
    assert not (tmp_path / "b" / "config.yaml").exists()  # nothing half-written
