"""The image sets of the edge-of-stability papers, read from torchvision's on-disk format.

``data.kind: torchvision`` (SPEC §4) reads MNIST, FashionMNIST and CIFAR-10 as
torchvision stores them, **without importing torchvision** (its wheels pin one
torch each; the workbench must not depend on it to read a few files):

- MNIST / FashionMNIST: ``root/<Name>/raw/`` with the four idx-ubyte files
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (or their ``.gz``);
  the idx format is LeCun's: a big-endian header (0, 0, type 0x08 = ubyte,
  number of dimensions), the dimensions as big-endian int32, then the bytes.
- CIFAR-10: ``root/cifar-10-batches-py/`` with the pickles ``data_batch_1`` …
  ``data_batch_5`` and ``test_batch``, each a dict with ``data`` (N, 3072)
  uint8 (1024 red, 1024 green, 1024 blue values, row-major: one image read as
  ``reshape(3, 32, 32)``) and ``labels`` (N ints). The pickles are read by an
  unpickler that builds nothing but numpy arrays, lists and dicts.

Only ``data.download: true`` imports torchvision, lazily, and only when the
files are missing: its dataset class fetches them (``download=True``) into
``root``. Pixels are scaled to [0, 1] (÷255) before ``data.normalize``.
"""

from __future__ import annotations

import errno
import gzip
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import UserInputError

#: canonical names (torchvision's dataset classes) → their image shape (C, H, W)
TORCHVISION_SETS: dict[str, tuple[int, int, int]] = {
    "MNIST": (1, 28, 28),
    "FashionMNIST": (1, 28, 28),
    "CIFAR10": (3, 32, 32),
}
N_CLASSES = 10  # all three sets have ten classes, labels 0…9
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = ("test_batch",)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
INSTALL_HINT = (
    "pip install 'implicit-bias[torchvision]' -c constraints.txt, where constraints.txt "
    "holds the installed torch (torch==X.Y.Z, from pip show torch): torchvision's wheels "
    "each need one torch release"
)


def canonical_name(name: str | None) -> str:
    """``name`` spelled as torchvision's class (case-insensitive; ``-``/``_`` ignored).

    Raises:
        UserInputError: naming ``data.name`` and the valid names.
    """
    key = (name or "").replace("-", "").replace("_", "").lower()
    for known in TORCHVISION_SETS:
        if known.lower() == key:
            return known
    raise UserInputError(
        f"data.name '{name}' is not a torchvision set this workbench reads; "
        f"valid: {', '.join(TORCHVISION_SETS)}"
    )


# ------------------------------------------------------------------ idx files
def _idx_path(folder: Path, stem: str) -> Path:
    """The idx file ``stem`` in ``folder``, plain or ``.gz`` (plain preferred)."""
    for p in (folder / stem, folder / f"{stem}.gz"):
        if p.is_file():
            return p
    raise FileNotFoundError(errno.ENOENT, "not found", str(folder / stem))


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx-ubyte array (LeCun's MNIST format) of ``ndim`` dimensions, as uint8.

    Raises:
        UserInputError: one line naming ``path`` when it is not such a file.
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise UserInputError(f"{path}: cannot read ({type(err).__name__}: {err})") from None
    head = 4 + 4 * ndim
    if len(raw) < head or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        raise UserInputError(
            f"{path}: not an idx-ubyte file of {ndim} dimension(s) (expected the header "
            f"00 00 08 {ndim:02x}, got {raw[:4].hex(' ') or 'nothing'})"
        )
    dims = tuple(int(v) for v in np.frombuffer(raw[4:head], dtype=">i4"))
    size = int(np.prod(dims))
    if len(raw) - head != size:
        raise UserInputError(
            f"{path}: the header says {dims} = {size} bytes of data, the file holds "
            f"{len(raw) - head}"
        )
    return np.frombuffer(raw[head:], dtype=np.uint8).reshape(dims)


def _read_mnist_split(folder: Path, split: str, shape: tuple[int, int, int]) -> tuple:
    img_stem, lab_stem = IDX_FILES[split]
    img_path, lab_path = _idx_path(folder, img_stem), _idx_path(folder, lab_stem)
    images, labels = read_idx(img_path, 3), read_idx(lab_path, 1)
    if images.shape[1:] != shape[1:]:
        raise UserInputError(
            f"{img_path}: images are {images.shape[1]}×{images.shape[2]}, "
            f"expected {shape[1]}×{shape[2]}"
        )
    if len(labels) != len(images):
        raise UserInputError(
            f"{lab_path}: {len(labels)} labels for the {len(images)} images of {img_path.name}"
        )
    return images.reshape(len(images), -1), labels.astype(np.int64), lab_path


# ------------------------------------------------------------------- CIFAR-10
class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain containers only: a pickle that names any other
    callable is refused (unpickling an arbitrary file could run code)."""

    _ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "scalar"),
            ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        # The real files were written by numpy 1 (``numpy.core``); numpy 2 calls it
        # ``numpy._core`` and warns on the old name.
        module = module.replace("numpy.core.", "numpy._core.")
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to build {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3072) uint8 images and (N,) labels of one CIFAR-10 batch pickle.

    Raises:
        UserInputError: one line naming ``path`` when it is not such a batch.
    """
    try:
        with path.open("rb") as f:
            entry = _ArrayUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise
    except Exception as err:  # UnpicklingError, EOFError, ValueError, …: one line
        raise UserInputError(
            f"{path}: cannot read as a CIFAR-10 batch ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(entry, dict):
        raise UserInputError(f"{path}: a CIFAR-10 batch is a dict, got {type(entry).__name__}")
    # Python 2's pickles give bytes keys; one written by Python 3 may give str keys
    got = {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in entry.items()}
    if "data" not in got or "labels" not in got:
        raise UserInputError(
            f"{path}: a CIFAR-10 batch needs the keys 'data' and 'labels' "
            f"(found: {', '.join(sorted(got)) or 'none'})"
        )
    data = np.asarray(got["data"])
    try:
        labels = np.asarray(got["labels"], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise UserInputError(f"{path}: 'labels' are not integers") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserInputError(
            f"{path}: 'data' must be (N, 3072) uint8, got {data.shape} {data.dtype}"
        )
    if len(labels) != len(data):
        raise UserInputError(f"{path}: {len(labels)} labels for {len(data)} images")
    return data, labels


def _read_cifar_split(folder: Path, names: tuple[str, ...]) -> tuple:
    parts = [_read_cifar_batch(folder / n) for n in names]
    last = folder / names[-1]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), last


# ------------------------------------------------------------------- download
def files_present(name: str, root: Path) -> bool:
    """Whether every file of ``name`` is under ``root`` (no reading, no checks)."""
    if name == "CIFAR10":
        folder = root / CIFAR_FOLDER
        return all((folder / n).is_file() for n in CIFAR_TRAIN + CIFAR_TEST)
    folder = root / name / "raw"
    stems = IDX_FILES["train"] + IDX_FILES["test"]
    return all((folder / s).is_file() or (folder / f"{s}.gz").is_file() for s in stems)


def download(name: str, root: Path) -> None:
    """Fetch ``name`` into ``root`` with torchvision's own dataset class.

    Raises:
        UserInputError: naming ``data.download`` when torchvision is missing (with
            how to install it) or the download fails.
    """
    try:
        import torchvision  # type: ignore[import-not-found]
    except Exception as err:  # ImportError, or a torchvision built for another torch
        raise UserInputError(
            f"data.download: true needs torchvision, which does not import here "
            f"({type(err).__name__}); install it with {INSTALL_HINT}, or put the files "
            f"under data.root yourself"
        ) from None
    cls = getattr(torchvision.datasets, name)
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as err:  # network, disk, checksum: one line naming the key
        raise UserInputError(
            f"data.download: fetching {name} into {root} failed ({type(err).__name__}: {err})"
        ) from None


# ----------------------------------------------------------------------- main
def read_torchvision(name: str, root: Path) -> tuple:
    """The whole training and test split of ``name`` as stored under ``root``.

    Args:
        name: a canonical name (:func:`canonical_name`).
        root: the folder torchvision was (or would be) given as ``root``.

    Returns:
        ``(X, y, X_test, y_test)``: X (N, C·H·W) uint8, each row one image
        flattened C-major (``reshape(N, C, H, W)`` reads it back), y (N,) int64
        class indices 0…9; the same for the test split.

    Raises:
        UserInputError: one line naming the missing or malformed file.
    """
    shape = TORCHVISION_SETS[name]
    try:
        if name == "CIFAR10":
            folder = root / CIFAR_FOLDER
            X, y, last = _read_cifar_split(folder, CIFAR_TRAIN)
            Xt, yt, last_t = _read_cifar_split(folder, CIFAR_TEST)
        else:
            folder = root / name / "raw"
            X, y, last = _read_mnist_split(folder, "train", shape)
            Xt, yt, last_t = _read_mnist_split(folder, "test", shape)
    except FileNotFoundError as err:
        raise UserInputError(
            f"data.root: {err.filename} not found ({name} in torchvision's layout under "
            f"{root}; set data.download: true to fetch it)"
        ) from None
    for labels, path in ((y, last), (yt, last_t)):
        bad = labels[(labels < 0) | (labels >= N_CLASSES)]
        if bad.size:
            raise UserInputError(
                f"{path}: label {int(bad[0])} is not a class index 0…{N_CLASSES - 1}"
            )
    return X, y, Xt, yt
