"""``data.kind: torchvision`` read from tiny files in torchvision's on-disk format (offline).

The files are written here, a few dozen images each: MNIST/FashionMNIST as
idx-ubyte (plain and gzipped) under ``root/<Name>/raw/``, CIFAR-10 as the
batch pickles under ``root/cifar-10-batches-py/``. No test imports or
downloads torchvision.
"""

from __future__ import annotations

import gzip
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from implicit_bias import UserInputError
from implicit_bias.config import load_config
from implicit_bias.data import make_dataset
from implicit_bias.data_torchvision import IDX_FILES, read_idx

N_TRAIN, N_TEST = 40, 20


def _images(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> tuple:
    """(n, *shape) uint8 images whose mean brightness grows with the label, and labels."""
    y = np.arange(n) % 10
    rng.shuffle(y)
    base = rng.integers(0, 100, size=(n, *shape))
    X = np.clip(base + 15 * y.reshape(-1, *[1] * len(shape)), 0, 255).astype(np.uint8)
    return X, y.astype(np.uint8)


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> None:
    head = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">i4").tobytes()
    raw = head + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def write_mnist(root: Path, name: str = "MNIST", gz: bool = False, seed: int = 0) -> dict:
    raw = root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        X, y = _images(rng, n, (28, 28))
        img, lab = IDX_FILES[split]
        write_idx(raw / img, X, gz)
        write_idx(raw / lab, y, gz)
        out[split] = (X, y)
    return out


def write_cifar(root: Path, seed: int = 0) -> dict:
    """Five training batches of 8 images and a test batch of 20, as Python 2 wrote them
    (bytes keys, ``data`` (N, 3072) uint8, ``labels`` a list)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Xs, ys = [], []
    for i in range(1, 6):
        X, y = _images(rng, 8, (3, 32, 32))
        entry = {b"batch_label": b"x", b"data": X.reshape(8, -1), b"labels": y.tolist()}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(entry, protocol=2))
        Xs.append(X)
        ys.append(y)
    Xt, yt = _images(rng, N_TEST, (3, 32, 32))
    entry = {b"data": Xt.reshape(N_TEST, -1), b"labels": yt.tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(entry, protocol=2))
    return {"train": (np.concatenate(Xs), np.concatenate(ys)), "test": (Xt, yt)}


def _data(root: Path | None, **kw) -> dict:
    return {"kind": "torchvision", "name": "MNIST", "root": str(root), **kw}


def test_idx_files_plain_and_gzipped_read_the_same(tmp_path):
    plain = write_mnist(tmp_path / "a", "FashionMNIST")
    write_mnist(tmp_path / "b", "FashionMNIST", gz=True)
    ds_a = make_dataset(load_config({"data": _data(tmp_path / "a", name="fashionmnist")}).data)
    ds_b = make_dataset(load_config({"data": _data(tmp_path / "b", name="FashionMNIST")}).data)
    assert ds_a.fingerprint() == ds_b.fingerprint()
    X, y = plain["train"]
    # default: the whole of both splits, all ten classes, pixels ÷255 in file order
    assert ds_a.X_train.shape == (N_TRAIN, 784) and ds_a.n_test == N_TEST
    assert ds_a.image_shape == (1, 28, 28) and ds_a.multiclass and ds_a.n_classes == 10
    np.testing.assert_array_equal(ds_a.X_train, X.reshape(N_TRAIN, -1) / 255.0)
    np.testing.assert_array_equal(ds_a.y_train, y)
    assert ds_a.description["name"] == "FashionMNIST"


def test_subsets_are_redrawn_per_data_seed_and_classes_pick_binary_labels(tmp_path):
    files = write_mnist(tmp_path)
    X, y = files["train"]
    flat = X.reshape(N_TRAIN, -1) / 255.0

    def draw(seed: int, **kw):
        return make_dataset(load_config({"data": _data(tmp_path, seed=seed, **kw)}).data)

    a, b, a2 = draw(0, n_train=10, n_test=5), draw(1, n_train=10, n_test=5), draw(0, n_train=10)
    assert a.X_train.shape == (10, 784) and a.n_test == 5
    assert not np.array_equal(a.X_train, b.X_train)
    np.testing.assert_array_equal(a.X_train, a2.X_train)  # n_test never moves the train set
    for row, label in zip(a.X_train, a.y_train, strict=True):  # every row an image of the file
        hit = np.flatnonzero((flat == row).all(axis=1))
        assert hit.size and y[hit[0]] == label
    binary = draw(0, classes=[[0, 1, 2], [7]], normalize="standardize")
    keep = np.isin(y, [0, 1, 2, 7])
    assert binary.n_train == keep.sum() and not binary.multiclass
    np.testing.assert_array_equal(binary.y_train, np.where(y[keep] < 5, 1.0, -1.0))
    assert abs(binary.X_train.mean(axis=0)).max() < 1e-12  # normalize applied after ÷255


def test_cifar_batches_are_read_channel_major(tmp_path):
    files = write_cifar(tmp_path)
    ds = make_dataset(load_config({"data": _data(tmp_path, name="CIFAR10")}).data)
    X, y = files["train"]
    assert ds.image_shape == (3, 32, 32) and ds.X_train.shape == (40, 3072)
    np.testing.assert_array_equal(ds.X_train.reshape(40, 3, 32, 32), X / 255.0)
    np.testing.assert_array_equal(ds.y_train, y)
    np.testing.assert_array_equal(ds.X_test.reshape(N_TEST, 3, 32, 32), files["test"][0] / 255.0)


def _cli(tmp_path: Path, raw: dict) -> tuple[int, list[str]]:
    from typer.testing import CliRunner

    from implicit_bias.cli import app

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    r = CliRunner().invoke(app, ["run", str(cfg), "--out", str(tmp_path / "out")])
    lines = [ln for ln in (r.stderr or r.stdout).strip().splitlines() if ln.strip()]
    return r.exit_code, lines


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_mlp_and_cnn_run_from_a_config_through_the_cli(tmp_path, model):
    import implicit_bias as ib

    if model == "mlp":
        write_mnist(tmp_path / "data")
        data = {"name": "MNIST", "n_train": 12, "n_test": 4, "classes": [[0, 1, 2], [3, 4, 5]]}
        mcfg = {"kind": "mlp", "depth": 2, "width": 8, "activation": "tanh"}
        loss = "mse"
    else:
        write_cifar(tmp_path / "data")
        data = {"name": "CIFAR10", "n_train": 12, "n_test": 6}
        mcfg = {"kind": "cnn", "channels": [2], "activation": "tanh", "pool": "avg"}
        loss = "cross_entropy"
    raw = {
        "name": "tv",
        "data": {"kind": "torchvision", "root": "data", **data},  # relative to the config
        "model": mcfg,
        "train": {"loss": loss, "steps": 3, "lr": 0.05, "dtype": "float64"},
        "metrics": {"every": 3, "sharpness": {"iters": 4}, "dense_early": False},
        "sweep": {"seed": [0, 1]},
    }
    code, lines = _cli(tmp_path, raw)
    assert code == 0, lines
    ds = ib.open_results(tmp_path / "out")["group_000"].to_dataset()
    assert ds.sizes["run"] == 2 and np.isfinite(ds["sharpness"].values).all()
    assert np.isfinite(ds["loss"].values).all()
    if model == "mlp":
        # the folder's own config.yaml, run from elsewhere, finds data.root where the
        # original config did (its folder is recorded in the results folder)
        from implicit_bias.store import data_base_dir

        assert data_base_dir(tmp_path / "out") == tmp_path.resolve()


def _bad_pickle() -> bytes:
    class Evil:
        def __reduce__(self):
            return (print, ("hello",))

    return pickle.dumps({b"data": Evil(), b"labels": [0]})


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("missing", "t10k-labels-idx1-ubyte not found"),
        ("header", "t10k-images-idx3-ubyte: not an idx-ubyte file of 3 dimension"),
        ("short", "train-labels-idx1-ubyte: the header says"),
        ("label", "is not a class index"),
        ("pickle", "refusing to build builtins.print"),
        ("cifar_keys", "needs the keys 'data' and 'labels'"),
    ],
)
def test_missing_or_malformed_files_exit_2_with_one_line(tmp_path, damage, needle):
    raw_dir = tmp_path / "data" / "MNIST" / "raw"
    name = "MNIST"
    if damage.startswith(("pickle", "cifar")):
        write_cifar(tmp_path / "data")
        batch = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_3"
        bad = _bad_pickle() if damage == "pickle" else pickle.dumps({b"images": 1}, protocol=2)
        batch.write_bytes(bad)
        name = "CIFAR10"
    else:
        write_mnist(tmp_path / "data")
    if damage == "missing":
        (raw_dir / "t10k-labels-idx1-ubyte").unlink()
    elif damage == "header":
        (raw_dir / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01junk")
    elif damage == "short":
        p = raw_dir / "train-labels-idx1-ubyte"
        p.write_bytes(p.read_bytes()[:-3])
    elif damage == "label":
        write_idx(raw_dir / "train-labels-idx1-ubyte", np.full(N_TRAIN, 12, np.uint8))
    raw = {
        "data": {"kind": "torchvision", "name": name, "root": "data"},
        "model": {"depth": 2, "width": 4},
        "train": {"loss": "cross_entropy", "steps": 2},
    }
    code, lines = _cli(tmp_path, raw)
    assert code == 2 and len(lines) == 1 and needle in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"name": None}, "data.name is required"),
        ({"root": ""}, "data.root is required"),
        ({"name": "SVHN"}, "data.name 'SVHN' is not a torchvision set"),
        ({"test_fraction": 0.2}, "data.test_fraction"),
        ({"n_train": 41}, "data.n_train=41 exceeds the 40 images"),
        ({"n_test": 5, "classes": [3, 4]}, "data.n_test=5 exceeds the 4 images of the test"),
    ],
)
def test_bad_keys_are_one_line(tmp_path, data, needle):
    write_mnist(tmp_path)
    raw = {k: v for k, v in {**_data(tmp_path), **data}.items() if v is not None}
    with pytest.raises(UserInputError, match=needle):
        make_dataset(load_config({"data": raw}).data)


def test_download_imports_torchvision_only_for_missing_files(tmp_path, monkeypatch):
    # files present: no import at all, even with download: true
    write_mnist(tmp_path / "have")
    monkeypatch.setitem(sys.modules, "torchvision", None)  # `import torchvision` fails
    ds = make_dataset(load_config({"data": _data(tmp_path / "have", download=True)}).data)
    assert ds.n_train == N_TRAIN
    # files missing, torchvision missing: one line naming data.download and how to install
    cfg = load_config({"data": _data(tmp_path / "none", download=True)})
    with pytest.raises(UserInputError, match=r"data.download: true needs torchvision.*-c "):
        make_dataset(cfg.data)
    # files missing, torchvision present: its class is asked for both splits
    calls = []

    class FakeMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((train, download))
            if train:
                write_mnist(Path(root))

    fake = types.ModuleType("torchvision")
    fake.datasets = types.SimpleNamespace(MNIST=FakeMNIST)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    ds = make_dataset(load_config({"data": _data(tmp_path / "fetch", download=True)}).data)
    assert calls == [(True, True), (False, True)] and ds.n_test == N_TEST


def test_read_idx_names_the_file(tmp_path):
    p = tmp_path / "x.gz"
    p.write_bytes(b"not gzip")
    with pytest.raises(UserInputError, match=r"x.gz: cannot read"):
        read_idx(p, 1)


def test_the_cifar10_config_plans_on_files_in_place(tmp_path):
    """configs/cohen-cifar10-cnn.yaml, pointed at tiny files (no download: they are there)."""
    from implicit_bias.sweep import make_plan

    write_cifar(tmp_path)
    config = Path(__file__).resolve().parents[1] / "configs" / "cohen-cifar10-cnn.yaml"
    cfg = load_config(config, {"data.root": str(tmp_path), "data.n_train": 30, "data.n_test": 10})
    plan = make_plan(cfg)
    ds = plan.runs[0].data
    assert ds.image_shape == (3, 32, 32) and ds.n_classes == 10 and ds.n_train == 30
    assert len(plan.runs) == 3
