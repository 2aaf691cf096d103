"""Tests for implicit_bias.data: every kind, determinism, geometry, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import linprog

from implicit_bias._errors import UserInputError
from implicit_bias.config import DataConfig
from implicit_bias.data import (
    Dataset,
    data_from_arrays,
    load_dataset,
    make_dataset,
    save_dataset,
)

GENERATED = ["degenerate", "overlap", "separable", "gaussian_mixture"]


def linearly_separable(X: np.ndarray, y: np.ndarray) -> bool:
    """Is there w with yᵢ⟨w, xᵢ⟩ ≥ 1 for all i (through the origin)? LP feasibility."""
    res = linprog(
        np.zeros(X.shape[1]),
        A_ub=-(y[:, None] * X),
        b_ub=-np.ones(len(y)),
        bounds=[(None, None)] * X.shape[1],
        method="highs",
    )
    assert res.status in (0, 2), res.message
    return res.status == 0


def check_dataset(ds: Dataset, n: int, m: int, d: int) -> None:
    assert ds.X_train.shape == (n, d) and ds.y_train.shape == (n,)
    assert ds.X_test.shape == (m, d) and ds.y_test.shape == (m,)
    for a in (ds.X_train, ds.y_train, ds.X_test, ds.y_test):
        assert a.dtype == np.float64
    assert set(np.unique(ds.y_train)) <= {-1.0, 1.0}
    assert set(np.unique(ds.y_test)) <= {-1.0, 1.0}
    json.dumps(ds.description)
    assert len(ds.fingerprint()) == 16


# ------------------------------------------------------------ generated kinds
@pytest.mark.parametrize("kind", GENERATED)
def test_generated_shapes_and_defaults(kind: str) -> None:
    check_dataset(make_dataset(DataConfig(kind=kind, n_train=30, n_test=7, d=5)), 30, 7, 5)
    ds = make_dataset(DataConfig(kind=kind))
    check_dataset(ds, 200, 1000, 20)
    assert ds.description["kind"] == kind


@pytest.mark.parametrize("kind", GENERATED)
def test_determinism(kind: str) -> None:
    a = make_dataset(DataConfig(kind=kind, n_train=40, n_test=10, d=4, seed=3))
    b = make_dataset(DataConfig(kind=kind, n_train=40, n_test=10, d=4, seed=3))
    c = make_dataset(DataConfig(kind=kind, n_train=40, n_test=10, d=4, seed=4))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    # The training set does not depend on the test size.
    e = make_dataset(DataConfig(kind=kind, n_train=40, n_test=0, d=4, seed=3))
    np.testing.assert_array_equal(a.X_train, e.X_train)
    assert e.X_test.shape == (0, 4) and e.y_test.shape == (0,)


@pytest.mark.parametrize("kind", GENERATED)
def test_p_positive_exact(kind: str) -> None:
    ds = make_dataset(DataConfig(kind=kind, n_train=100, n_test=50, d=3, p_positive=0.3))
    # Observed labels: exactly round(p·n) are +1 (degenerate flips signs of x, not labels).
    assert np.sum(ds.y_train > 0) == 30
    assert np.sum(ds.y_test > 0) == 15


def test_degenerate_rank_one_and_separability() -> None:
    sep = make_dataset(DataConfig(kind="degenerate", n_train=50, n_test=20, d=6))
    both = np.vstack([sep.X_train, sep.X_test])
    assert np.linalg.matrix_rank(both) == 1
    assert linearly_separable(sep.X_train, sep.y_train)
    assert sep.description["separable"] is True and sep.description["frac_agree"] == 1.0
    norms = np.linalg.norm(both, axis=1)
    assert norms.min() >= 0.5 and norms.max() <= 1.5

    for seed in range(5):
        ns = make_dataset(DataConfig(kind="degenerate", n_train=20, separable=False, seed=seed))
        assert np.linalg.matrix_rank(ns.X_train) == 1
        assert not linearly_separable(ns.X_train, ns.y_train)
        # Both sides of the origin carry both labels.
        u = ns.X_train[0] / np.linalg.norm(ns.X_train[0])
        side = np.sign(ns.X_train @ u)
        for s in (-1, 1):
            assert set(ns.y_train[side == s]) == {-1.0, 1.0}
        assert ns.description["label_noise"] == 0.2
        assert ns.description["frac_agree"] == pytest.approx(0.8)
    # label_noise > 0 alone means non-separable; tiny n still works.
    tiny = make_dataset(DataConfig(kind="degenerate", n_train=4, label_noise=0.1))
    assert not linearly_separable(tiny.X_train, tiny.y_train)


def test_separable_and_overlap() -> None:
    for seed in range(3):
        ds = make_dataset(DataConfig(kind="separable", n_train=300, d=5, seed=seed, margin=2.0))
        assert linearly_separable(ds.X_train, ds.y_train)
        assert linearly_separable(ds.X_test, ds.y_test)
        # Some unit w gives margin ≥ margin/2 = 1: the LP y⟨w,x⟩ ≥ 1 with ‖w‖ ≤ 1 is
        # checked through the hard-margin SVM norm: min ‖w‖ s.t. y⟨w,x⟩ ≥ 1 is ≤ 1.
        from sklearn.svm import LinearSVC

        svm = LinearSVC(C=1e6, fit_intercept=False, max_iter=200_000, tol=1e-8)
        svm.fit(ds.X_train, ds.y_train)
        w = svm.coef_.ravel() / np.linalg.norm(svm.coef_)
        assert np.min(ds.y_train * (ds.X_train @ w)) >= 1.0 - 0.05
        ov = make_dataset(DataConfig(kind="overlap", d=5, seed=seed))
        assert not linearly_separable(ov.X_train, ov.y_train)


def test_gaussian_mixture_mean_norm_and_noise() -> None:
    cfg = dict(kind="gaussian_mixture", n_train=20_000, n_test=0, d=30)
    ds = make_dataset(DataConfig(**cfg, mean_norm=3.0))
    mu_hat = (ds.X_train[ds.y_train > 0].mean(0) - ds.X_train[ds.y_train < 0].mean(0)) / 2
    assert np.linalg.norm(mu_hat) == pytest.approx(3.0, abs=0.1)
    default = make_dataset(DataConfig(kind="gaussian_mixture", d=30))
    assert default.description["mean_norm"] == pytest.approx(30**0.26)
    # Label noise flips exactly round(ε n) observed training labels; x and test labels are clean.
    clean = make_dataset(DataConfig(kind="gaussian_mixture", n_train=200, n_test=100, seed=1))
    noisy = make_dataset(
        DataConfig(kind="gaussian_mixture", n_train=200, n_test=100, seed=1, label_noise=0.15)
    )
    np.testing.assert_array_equal(clean.X_train, noisy.X_train)
    np.testing.assert_array_equal(clean.y_test, noisy.y_test)
    assert np.sum(clean.y_train != noisy.y_train) == 30


# ------------------------------------------------------------------ normalize
def test_normalize() -> None:
    u = make_dataset(DataConfig(kind="overlap", n_train=50, n_test=20, d=4, normalize="unit"))
    np.testing.assert_allclose(np.linalg.norm(u.X_train, axis=1), 1.0)
    np.testing.assert_allclose(np.linalg.norm(u.X_test, axis=1), 1.0)
    s = make_dataset(
        DataConfig(kind="overlap", n_train=50, n_test=20, d=4, normalize="standardize")
    )
    np.testing.assert_allclose(s.X_train.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(s.X_train.std(0), 1.0)
    raw = make_dataset(DataConfig(kind="overlap", n_train=50, n_test=20, d=4))
    mean, std = raw.X_train.mean(0), raw.X_train.std(0)
    np.testing.assert_allclose(s.X_test, (raw.X_test - mean) / std)


# -------------------------------------------------------------------- sklearn
@pytest.mark.parametrize("name", ["digits", "breast_cancer", "iris", "wine", "load_iris"])
def test_sklearn_defaults(name: str) -> None:
    ds = make_dataset(DataConfig(kind="sklearn", name=name))
    total = ds.n_train + ds.n_test
    assert ds.n_test == round(0.25 * total)
    check_dataset(ds, ds.n_train, ds.n_test, ds.d)
    assert set(np.unique(ds.y_train)) == {-1.0, 1.0}


def test_sklearn_classes_and_sizes() -> None:
    ds = make_dataset(DataConfig(kind="sklearn", name="iris", classes=[1, 2], n_train=60))
    check_dataset(ds, 60, 40, 4)
    assert ds.description["classes"] == [[1], [2]]
    ds = make_dataset(
        DataConfig(kind="sklearn", name="digits", classes=[[3], [8, 5]], n_train=100, n_test=50)
    )
    check_dataset(ds, 100, 50, 64)
    only_test = make_dataset(DataConfig(kind="sklearn", name="iris", n_test=50))
    check_dataset(only_test, 100, 50, 4)
    std = make_dataset(DataConfig(kind="sklearn", name="wine", normalize="standardize"))
    np.testing.assert_allclose(std.X_train.mean(0), 0.0, atol=1e-10)
    a = make_dataset(DataConfig(kind="sklearn", name="wine", seed=1))
    b = make_dataset(DataConfig(kind="sklearn", name="wine", seed=2))
    assert a.fingerprint() != b.fingerprint()


# ----------------------------------------------------------------------- file
def test_file_npz(tmp_path) -> None:
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((30, 3)), rng.integers(0, 2, 30)
    Xt, yt = rng.standard_normal((5, 3)), np.array([1, -1, 1, 1, -1])
    np.savez(tmp_path / "d.npz", X_train=X, y_train=y, X_test=Xt, y_test=yt)
    ds = make_dataset(DataConfig(kind="file", path="d.npz"), base_dir=tmp_path)
    check_dataset(ds, 30, 5, 3)
    np.testing.assert_array_equal(ds.X_train, X)
    np.testing.assert_array_equal(ds.y_train, np.where(y == 1, 1.0, -1.0))
    np.testing.assert_array_equal(ds.y_test, yt)
    sub = make_dataset(DataConfig(kind="file", path=str(tmp_path / "d.npz"), n_train=10, n_test=2))
    check_dataset(sub, 10, 2, 3)


def test_file_npy_and_split(tmp_path) -> None:
    X = np.arange(40.0).reshape(20, 2)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", np.tile([True, False], 10))
    cfg = DataConfig(kind="file", path="X.npy", labels="y.npy")
    ds = make_dataset(cfg, base_dir=tmp_path)
    check_dataset(ds, 20, 0, 2)
    np.testing.assert_array_equal(ds.y_train, np.tile([1.0, -1.0], 10))
    split = make_dataset(
        DataConfig(kind="file", path="X.npy", labels="y.npy", test_fraction=0.25), base_dir=tmp_path
    )
    check_dataset(split, 15, 5, 2)
    rows = {tuple(r) for r in np.vstack([split.X_train, split.X_test])}
    assert rows == {tuple(r) for r in X}


def test_file_csv(tmp_path) -> None:
    (tmp_path / "h.csv").write_text("a,label,b\n1,1,2\n3,0,4\n5,1,5\n")
    ds = make_dataset(DataConfig(kind="file", path="h.csv", label_column="label"), tmp_path)
    np.testing.assert_array_equal(ds.X_train, [[1, 2], [3, 4], [5, 5]])
    np.testing.assert_array_equal(ds.y_train, [1, -1, 1])
    (tmp_path / "n.csv").write_text("1.5,2,-1\n3,4,1\n\n")
    ds = make_dataset(DataConfig(kind="file", path="n.csv"), tmp_path)
    np.testing.assert_array_equal(ds.y_train, [-1, 1])
    ds = make_dataset(DataConfig(kind="file", path="n.csv", label_column=-1), tmp_path)
    np.testing.assert_array_equal(ds.X_train, [[1.5, 2], [3, 4]])
    # A label column given as a numeric string (e.g. from --set) is an index.
    ds = make_dataset(DataConfig(kind="file", path="n.csv", label_column="2"), tmp_path)
    assert ds.d == 2


def test_standardize_constant_column(tmp_path) -> None:
    (tmp_path / "c.csv").write_text("1,7,1\n2,7,-1\n3,7,1\n")
    ds = make_dataset(DataConfig(kind="file", path="c.csv", normalize="standardize"), tmp_path)
    np.testing.assert_array_equal(ds.X_train[:, 1], 0.0)


# ------------------------------------------------------------- arrays, store
def test_data_from_arrays_and_roundtrip(tmp_path) -> None:
    ds = data_from_arrays(np.ones((3, 2), dtype=np.float32), np.array([1.0, 0.0, 1.0]))
    check_dataset(ds, 3, 0, 2)
    np.testing.assert_array_equal(ds.y_train, [1, -1, 1])
    orig = make_dataset(DataConfig(kind="gaussian_mixture", n_train=20, n_test=5, d=3))
    save_dataset(orig, tmp_path / "data.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["data.npz"]
    back = load_dataset(tmp_path / "data.npz")
    assert back.fingerprint() == orig.fingerprint()
    assert back.description == orig.description
    empty = data_from_arrays(np.ones((2, 3)), [1, -1], np.zeros((0, 3)), np.zeros(0))
    save_dataset(empty, tmp_path / "e.npz")
    assert load_dataset(tmp_path / "e.npz").X_test.shape == (0, 3)


# ---------------------------------------------------------------- bad input
def _raises(match: str, cfg: DataConfig, base_dir=None) -> str:
    with pytest.raises(UserInputError, match=match) as info:
        make_dataset(cfg, base_dir=base_dir)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_bad_files(tmp_path) -> None:
    _raises(
        r"data\.path: file not found: .*nope\.npz",
        DataConfig(kind="file", path="nope.npz"),
        tmp_path,
    )
    (tmp_path / "bad.npz").write_bytes(b"this is not a zip file")
    _raises(
        r"data\.path: .*bad\.npz: cannot read as \.npz",
        DataConfig(kind="file", path="bad.npz"),
        tmp_path,
    )
    np.savez(tmp_path / "keys.npz", X=np.ones((2, 2)), y=np.ones(2))
    msg = _raises(
        r"keys\.npz: missing key 'X_train'", DataConfig(kind="file", path="keys.npz"), tmp_path
    )
    assert "found: X, y" in msg
    np.savez(
        tmp_path / "half.npz", X_train=np.ones((2, 2)), y_train=np.ones(2), X_test=np.ones((1, 2))
    )
    _raises(
        r"half\.npz.*X_test given without y_test",
        DataConfig(kind="file", path="half.npz"),
        tmp_path,
    )
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    (tmp_path / "y.npy").write_bytes(b"garbage")
    _raises(
        r"data\.path: cannot read .*bad\.npy",
        DataConfig(kind="file", path="bad.npy", labels="y.npy"),
        tmp_path,
    )
    np.save(tmp_path / "X.npy", np.ones((3, 2)))
    _raises(r"data\.labels is required", DataConfig(kind="file", path="X.npy"), tmp_path)
    _raises(
        r"data\.labels: file not found",
        DataConfig(kind="file", path="X.npy", labels="no.npy"),
        tmp_path,
    )
    np.save(tmp_path / "obj.npy", np.array([1, "a"], dtype=object))
    _raises(
        r"data\.labels: cannot read .*obj\.npy",
        DataConfig(kind="file", path="X.npy", labels="obj.npy"),
        tmp_path,
    )
    (tmp_path / "t.txt").write_text("1,2\n")
    _raises(r"unsupported file type '\.txt'", DataConfig(kind="file", path="t.txt"), tmp_path)
    (tmp_path / "words.csv").write_text("a,b\n1,x\n")
    _raises(
        r"words\.csv: line 2: 'x' is not a number",
        DataConfig(kind="file", path="words.csv"),
        tmp_path,
    )
    (tmp_path / "ragged.csv").write_text("1,2,1\n3,1\n")
    _raises(
        r"ragged\.csv: line 2 has 2 columns, expected 3",
        DataConfig(kind="file", path="ragged.csv"),
        tmp_path,
    )
    (tmp_path / "ok.csv").write_text("a,b,y\n1,2,1\n3,4,-1\n")
    _raises(
        r"data\.label_column 'z' is not a column of .*ok\.csv",
        DataConfig(kind="file", path="ok.csv", label_column="z"),
        tmp_path,
    )
    _raises(
        r"data\.label_column=5 is out of range",
        DataConfig(kind="file", path="ok.csv", label_column=5),
        tmp_path,
    )
    (tmp_path / "empty.csv").write_text("")
    _raises(
        r"empty\.csv: the CSV file is empty", DataConfig(kind="file", path="empty.csv"), tmp_path
    )
    _raises(
        r"data\.n_train=5 exceeds the 2 samples .*ok\.csv",
        DataConfig(kind="file", path="ok.csv", n_train=5),
        tmp_path,
    )
    _raises(
        r"data\.d=3 but .*ok\.csv has 2 features",
        DataConfig(kind="file", path="ok.csv", d=3),
        tmp_path,
    )
    with pytest.raises(UserInputError, match=r"dataset file not found"):
        load_dataset(tmp_path / "missing.npz")


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        (
            {"X_train": np.array([[1.0, np.nan]]), "y_train": np.ones(1)},
            r"X_train contains NaN or inf",
        ),
        (
            {"X_train": np.ones((2, 2)), "y_train": np.array([1.0, np.inf])},
            r"y_train contains NaN or inf",
        ),
        (
            {"X_train": np.ones((3, 2)), "y_train": np.array([0, 1, 2.5])},
            r"y_train has values \{0, 1, 2.5\}",
        ),
        ({"X_train": np.ones((3, 2)), "y_train": np.array([-1, 0, 1])}, r"\{-1, 0, 1\}"),
        (
            {"X_train": np.ones((3, 2)), "y_train": np.ones(2)},
            r"X_train has 3 rows but y_train has 2",
        ),
        ({"X_train": np.ones((3, 2, 2)), "y_train": np.ones(3)}, r"X_train must be 2-D"),
        (
            {
                "X_train": np.ones((3, 2)),
                "y_train": np.ones(3),
                "X_test": np.ones((1, 3)),
                "y_test": np.ones(1),
            },
            r"X_test has 3 features but X_train has 2",
        ),
        (
            {
                "X_train": np.ones((3, 2)),
                "y_train": np.ones(3),
                "X_test": np.ones((1, 2)),
                "y_test": np.array([0.5]),
            },
            r"y_test has values \{0.5\}",
        ),
    ],
)
def test_bad_arrays(tmp_path, arrays: dict, match: str) -> None:
    np.savez(tmp_path / "a.npz", **arrays)
    msg = _raises(match, DataConfig(kind="file", path="a.npz"), tmp_path)
    assert "a.npz" in msg
    with pytest.raises(UserInputError, match=match):
        data_from_arrays(
            arrays["X_train"], arrays["y_train"], arrays.get("X_test"), arrays.get("y_test")
        )


def test_bad_arrays_non_numeric() -> None:
    with pytest.raises(UserInputError, match=r"src: y_train must be numeric"):
        data_from_arrays(np.ones((2, 2)), np.array(["a", "b"]), source="src")


def test_bad_sklearn_and_generated() -> None:
    msg = _raises(r"data\.name 'mnist'", DataConfig(kind="sklearn", name="mnist"))
    assert "digits" in msg and "breast_cancer" in msg
    _raises(
        r"data\.classes: class 7 does not exist in 'iris'",
        DataConfig(kind="sklearn", name="iris", classes=[0, 7]),
    )
    _raises(
        r"data\.classes: a flat list must be \[a, b\]",
        DataConfig(kind="sklearn", name="iris", classes=[0, 1, 2]),
    )
    _raises(
        r"data\.classes: class \[1\] is in both groups",
        DataConfig(kind="sklearn", name="iris", classes=[[0, 1], [1]]),
    )
    _raises(
        r"data\.classes must be two non-empty groups",
        DataConfig(kind="sklearn", name="iris", classes=[[0], [1], [2]]),
    )
    _raises(
        r"data\.n_train=1000 exceeds the 150 samples",
        DataConfig(kind="sklearn", name="iris", classes=[[0], [1, 2]], n_train=1000),
    )
    _raises(
        r"data\.n_train \+ data\.n_test = 100 \+ 60 exceeds",
        DataConfig(kind="sklearn", name="iris", classes=[[0], [1, 2]], n_train=100, n_test=60),
    )
    _raises(
        r"data\.n_test=151 exceeds the 150 samples",
        DataConfig(kind="sklearn", name="iris", n_test=151),
    )
    _raises(
        r"data\.n_test leaves no training samples",
        DataConfig(kind="sklearn", name="iris", n_test=150),
    )
    _raises(r"data\.d=3 but 'iris' has 4 features", DataConfig(kind="sklearn", name="iris", d=3))
    _raises(
        r"data\.n_train must be >= 4", DataConfig(kind="degenerate", n_train=3, separable=False)
    )
    _raises(
        r"data\.label_noise must be 0 or unset",
        DataConfig(kind="degenerate", separable=True, label_noise=0.1),
    )
    _raises(
        r"data\.label_noise must be > 0",
        DataConfig(kind="degenerate", separable=False, label_noise=0.0),
    )
    # a negative data seed is refused by the config itself, like a negative run seed
    from implicit_bias import UserInputError, load_config

    with pytest.raises(UserInputError, match=r"data\.seed"):
        load_config({"data": {"kind": "overlap", "seed": -1}})
