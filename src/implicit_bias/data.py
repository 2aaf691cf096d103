"""The data of one experiment, built from a :class:`~implicit_bias.config.DataConfig` (SPEC §4).

Every kind returns a :class:`Dataset` of float64 arrays with labels in {−1, +1}.
Generated kinds are a deterministic function of ``data.seed``: one
``numpy.random.default_rng(seed)`` is split into independent streams for the
random directions, the training set and the test set, so changing ``n_test``
never changes the training data.

Kinds and their defaults (``None`` in the config means the default):

``degenerate`` (Liu, Huang, Xu 2023, arXiv 2011.12547)
    All inputs on one line, xᵢ = sᵢ·u with u a random unit vector in ℝᵈ and
    sᵢ = σᵢ·rᵢ, magnitude rᵢ ~ U(0.5, 1.5) (bounded away from 0 so no point
    sits on the decision boundary, mean 1 so the scale is that of unit-norm
    data) and sign σᵢ = ±1. Observed labels: exactly round(p·n) are +1
    (``p_positive``, default 0.5). Separable (``separable``; default true
    unless ``label_noise`` > 0): σᵢ = yᵢ. Non-separable: a fraction
    ``label_noise`` (default 0.2) of points get σᵢ = −yᵢ, with at least one
    such flipped point *and* one unflipped point in each label class, so
    both sides of the origin carry both labels. Since a bias-free model only
    sees yᵢsᵢ, the "p" of Liu et al.'s one-dimensional reduction is the
    unflipped fraction, recorded as ``description["frac_agree"]``. The test
    set is drawn the same way (same u, same flip fraction, no guarantee).
``overlap``
    x = y·(shift/2)·e + z, z ~ N(0, I_d), e a random unit vector: two unit
    Gaussians whose means are ``shift`` apart (default 1.0, Bayes error
    Φ(−shift/2) ≈ 0.31), not linearly separable once n ≫ d. ``p_positive``
    as above; optional ``label_noise`` (default 0) flips training labels only.
``separable``
    z ~ N(0, I_d), w a random unit vector; the component of z along w is
    replaced by y·(margin/2 + |⟨w, z⟩|), i.e. x = z − ⟨w,z⟩w + y(margin/2 +
    |⟨w,z⟩|)w. Two half-Gaussian classes pushed apart, separable through the
    origin by w with geometric margin ≥ ``margin``/2 (default margin 1.0),
    train and test alike; no pile-up of points on the margin.
``gaussian_mixture`` (Frei, Vardi, Bartlett, Srebro, Hu 2023, arXiv 2210.07082)
    x = ỹμ + z, z ~ N(0, I_d), μ = ``mean_norm``·u (default ‖μ‖ = d^0.26, the
    scaling of the paper's experiments: ‖μ‖² = d^0.52 ≲ d/n once d ≳ n^2.1),
    clean labels ỹ with ``p_positive``; then exactly round(ε·n) observed
    training labels are flipped (ε = ``label_noise``, default 0). The test set
    is drawn the same way *without* label noise, so test accuracy measures
    recovery of the clean rule.
``sklearn``
    A data set bundled with scikit-learn (no download): ``digits``,
    ``breast_cancer``, ``iris``, ``wine``. ``classes`` is ``[a, b]`` (class
    a → +1, b → −1) or ``[[a, …], [c, …]]`` (first group → +1, second → −1;
    other classes dropped). Default split: digits even vs odd, breast_cancer
    benign (1) vs malignant (0), iris and wine class 0 vs the rest. Shuffled
    with the data seed, then split (see :func:`_split_sizes`). ``classes: all``
    keeps every class, labels 0…K−1; digits are then 1×8×8 images.
``torchvision``
    ``MNIST``, ``FashionMNIST`` (1×28×28) or ``CIFAR10`` (3×32×32) read from
    torchvision's files under ``root`` without importing torchvision
    (:mod:`implicit_bias.data_torchvision`; ``download: true`` fetches missing
    files with it). Pixels ÷255 into [0, 1]. ``classes`` as for sklearn, default
    ``all`` (ten classes); ``n_train``/``n_test`` are random subsets of the
    training and test split (default: all of each), redrawn per data seed.
``file``
    ``.npz`` (keys ``X_train``, ``y_train``, optional ``X_test``, ``y_test``),
    ``.npy`` (``path`` is X, ``labels`` is y) or ``.csv`` (comma-separated
    numbers, optional header row, ``label_column`` name or index, default the
    last). Used as-is apart from ``normalize``; without a test set in the file
    one is split off only if ``test_fraction`` is set. ``n_train``/``n_test``
    take a random subset (order kept) and must not exceed what is there.

Generated kinds default to n_train 200, n_test 1000, d 20. ``normalize``
(``none``, ``unit`` rows to norm 1, ``standardize`` with the training mean and
std, constant columns keeping std 1) is applied last, to every kind.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import UserInputError
from .config import DataConfig

DEFAULT_N_TRAIN = 200
DEFAULT_N_TEST = 1000
DEFAULT_D = 20
DEFAULT_TEST_FRACTION = 0.25

SKLEARN_NAMES = ("breast_cancer", "digits", "iris", "wine")
# Default class splits: (+1 group, −1 group); None means "all other classes".
_SKLEARN_DEFAULT_CLASSES: dict[str, tuple[list[int], list[int] | None]] = {
    "digits": ([0, 2, 4, 6, 8], [1, 3, 5, 7, 9]),
    "breast_cancer": ([1], [0]),
    "iris": ([0], None),
    "wine": ([0], None),
}

_ARRAY_KEYS = ("X_train", "y_train", "X_test", "y_test")
#: the bundled sets that are images: digits are 8×8 grey levels (one channel)
_SKLEARN_IMAGES: dict[str, dict[str, Any]] = {"digits": {"image_shape": [1, 8, 8]}}


def fingerprint_arrays(arrays: Mapping[str, Any]) -> str:
    """First 16 hex chars of a sha256 over ``X_train``, ``y_train``, ``X_test``,
    ``y_test`` (shapes and float64 bytes): :meth:`Dataset.fingerprint`, also of
    arrays read back from a results folder."""
    h = hashlib.sha256()
    for name in _ARRAY_KEYS:
        a = np.ascontiguousarray(arrays[name], dtype=np.float64)
        h.update(f"{name}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------- Dataset
@dataclass(frozen=True, eq=False)
class Dataset:
    """Training and test data of one experiment.

    Attributes:
        X_train: (n, d) float64 inputs.
        y_train: (n,) float64 labels in {−1, +1}.
        X_test: (m, d) float64; m may be 0.
        y_test: (m,) float64 labels in {−1, +1}.
        description: JSON-able dict: ``kind`` and the resolved parameters.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    description: dict[str, Any] = field(default_factory=dict)
    _fingerprint: str | None = field(default=None, init=False, repr=False)

    @property
    def n_train(self) -> int:
        return int(self.X_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.X_test.shape[0])

    @property
    def d(self) -> int:
        return int(self.X_train.shape[1])

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) when the inputs are images (each row of X is one, flattened
        C-major as ``reshape(n, C, H, W)`` reads it), else ``None``."""
        shape = self.description.get("image_shape")
        if shape is None or int(np.prod(shape)) != self.d:
            return None
        c, h, w = (int(v) for v in shape)
        return c, h, w

    @property
    def n_classes(self) -> int:
        """2 for ±1 labels; K for class indices 0…K−1 (the description's
        ``n_classes`` when given, else the largest index seen + 1)."""
        if "n_classes" in self.description:
            return int(self.description["n_classes"])
        if not self.multiclass:
            return 2
        return int(np.concatenate([self.y_train, self.y_test]).max()) + 1

    @property
    def multiclass(self) -> bool:
        """Labels are class indices 0…K−1 (K outputs), not ±1 (one output)."""
        if "n_classes" in self.description:
            return True
        ys = np.concatenate([self.y_train, self.y_test])
        return not set(np.unique(ys).tolist()) <= {-1.0, 1.0}

    def fingerprint(self) -> str:
        """First 16 hex chars of a sha256 over the four arrays (shapes and float64 bytes).

        Computed once: runs share one Dataset and the engine, the store and the
        geometry cache all key on it (the arrays are never modified in place).
        """
        if self._fingerprint is None:
            fp = fingerprint_arrays({name: getattr(self, name) for name in _ARRAY_KEYS})
            object.__setattr__(self, "_fingerprint", fp)
        assert self._fingerprint is not None
        return self._fingerprint


# ------------------------------------------------------------------- checks
def _fmt_values(values: np.ndarray, limit: int = 8) -> str:
    vals = np.unique(values)
    shown = [str(int(v)) if float(v).is_integer() else repr(float(v)) for v in vals[:limit]]
    more = f", … ({len(vals)} distinct)" if len(vals) > limit else ""
    return "{" + ", ".join(shown) + more + "}"


def _check_X(X: Any, where: str, name: str) -> np.ndarray:
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise UserInputError(f"{where}: {name} must be numeric (got dtype {X.dtype})")
    if X.ndim != 2:
        raise UserInputError(
            f"{where}: {name} must be 2-D (n, d), got shape {X.shape}; reshape it to (n, d)"
        )
    X = X.astype(np.float64)
    if not np.isfinite(X).all():
        raise UserInputError(f"{where}: {name} contains NaN or inf")
    return X


def _check_y(y: Any, where: str, name: str, multiclass: bool = False) -> np.ndarray:
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise UserInputError(f"{where}: {name} must be numeric (got dtype {y.dtype})")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise UserInputError(f"{where}: {name} must be 1-D (n,), got shape {y.shape}")
    y = y.astype(np.float64)
    if not np.isfinite(y).all():
        raise UserInputError(f"{where}: {name} contains NaN or inf")
    vals = set(np.unique(y).tolist())
    if vals <= {-1.0, 1.0} and not multiclass:
        return y
    if vals <= {0.0, 1.0} and not multiclass:
        # {0, 1} labels: 1 → +1, 0 → −1.
        return 2.0 * y - 1.0
    if all(v >= 0 and float(v).is_integer() for v in vals):
        return y  # class indices 0…K−1 of multiclass data (K ≥ 3 here)
    raise UserInputError(
        f"{where}: {name} has values {_fmt_values(y)}; labels must all be in {{-1, 1}}, "
        "all in {0, 1}, or class indices 0, 1, …, K−1"
    )


def _check_pair(
    X: Any, y: Any, where: str, part: str, multiclass: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    Xc = _check_X(X, where, f"X_{part}")
    yc = _check_y(y, where, f"y_{part}", multiclass)
    if Xc.shape[0] != yc.shape[0]:
        raise UserInputError(
            f"{where}: X_{part} has {Xc.shape[0]} rows but y_{part} has {yc.shape[0]} labels"
        )
    return Xc, yc


def _is_multiclass(*ys: Any) -> bool:
    """Labels with a value outside {−1, 0, 1} (train and test together; e.g. 0, 1, 2)
    are class indices, kept as they are for both; otherwise each array is binary."""
    try:
        vals = set(np.unique(np.concatenate([np.ravel(v) for v in ys if v is not None])).tolist())
    except (TypeError, ValueError):
        return False  # _check_y names the problem
    return not vals <= {-1.0, 0.0, 1.0}


def _checked(
    X: Any, y: Any, X_test: Any, y_test: Any, where: str, multiclass: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    multiclass = multiclass or _is_multiclass(y, y_test)
    X, y = _check_pair(X, y, where, "train", multiclass)
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise UserInputError(f"{where}: X_train is empty (shape {X.shape})")
    if (X_test is None) != (y_test is None):
        given, missing = ("X_test", "y_test") if y_test is None else ("y_test", "X_test")
        raise UserInputError(f"{where}: {given} given without {missing}")
    if X_test is None:
        return X, y, np.zeros((0, X.shape[1])), np.zeros(0)
    Xt, yt = _check_pair(X_test, y_test, where, "test", multiclass)
    if Xt.shape[0] == 0:
        Xt = Xt.reshape(0, X.shape[1])
    if Xt.shape[1] != X.shape[1]:
        raise UserInputError(
            f"{where}: X_test has {Xt.shape[1]} features but X_train has {X.shape[1]}"
        )
    return X, y, Xt, yt


def data_from_arrays(
    X: Any,
    y: Any,
    X_test: Any = None,
    y_test: Any = None,
    source: str = "arrays",
    multiclass: bool = False,
) -> Dataset:
    """A checked :class:`Dataset` from user arrays.

    Args:
        X: (n, d) numeric inputs, finite.
        y: (n,) labels of any numeric dtype, all in {−1, 1} or all in {0, 1}
            (then 1 → +1, 0 → −1).
        X_test, y_test: optional (m, d) and (m,); both or neither.
        source: named in error messages (a file or a key).
        multiclass: the labels are class indices 0…K−1 even where they look
            binary (also decided from the labels: neither all ±1 nor all 0/1).

    Raises:
        UserInputError: one line naming ``source`` and what is wrong.
    """
    X, y, Xt, yt = _checked(X, y, X_test, y_test, source, multiclass)
    desc = {"kind": "arrays", "source": str(source), "n_train": len(y), "n_test": len(yt)}
    desc["d"] = int(X.shape[1])
    return Dataset(X, y, Xt, yt, desc)


# ---------------------------------------------------------------- normalize
def _normalize(X: np.ndarray, Xt: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    if how == "unit":

        def unit(A: np.ndarray) -> np.ndarray:
            norms = np.linalg.norm(A, axis=1, keepdims=True)
            return A / np.where(norms > 0, norms, 1.0)  # zero rows stay zero

        return unit(X), unit(Xt)
    if how == "standardize":
        mean = X.mean(axis=0)
        std = X.std(axis=0)
        std = np.where(std > 0, std, 1.0)  # constant columns: centred to 0, not divided by 0
        return (X - mean) / std, (Xt - mean) / std
    return X, Xt


# ----------------------------------------------------------- label helpers
def _labels(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    """(n,) labels with exactly round(p·n) entries +1 (both classes when n ≥ 2)."""
    n_pos = round(p * n)
    if n >= 2:
        n_pos = min(max(n_pos, 1), n - 1)
    y = -np.ones(n)
    y[rng.permutation(n)[:n_pos]] = 1.0
    return y


def _flip_mask(rng: np.random.Generator, n: int, frac: float) -> np.ndarray:
    """(n,) bool mask with exactly round(frac·n) True entries at random positions."""
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: round(frac * n)]] = True
    return mask


def _unit_vector(rng: np.random.Generator, d: int) -> np.ndarray:
    u = rng.standard_normal(d)
    return u / np.linalg.norm(u)


# ---------------------------------------------------------- generated kinds
def _degenerate_split(
    rng: np.random.Generator, u: np.ndarray, n: int, p: float, noise: float, strict: bool
) -> tuple[np.ndarray, np.ndarray]:
    y = _labels(rng, n, p)
    flip = np.zeros(n, dtype=bool)
    if noise > 0:
        if strict:
            # Non-separable through the origin needs, on each side of it, both
            # labels: at least one flipped and one unflipped point per class.
            pos, neg = (
                rng.permutation(np.flatnonzero(y > 0)),
                rng.permutation(np.flatnonzero(y < 0)),
            )
            n_flip = max(round(noise * n), 2)
            k_pos = min(max(round(n_flip * len(pos) / n), 1), len(pos) - 1)
            k_neg = min(max(n_flip - k_pos, 1), len(neg) - 1)
            flip[pos[:k_pos]] = True
            flip[neg[:k_neg]] = True
        else:
            flip = _flip_mask(rng, n, noise)
    sign = np.where(flip, -y, y)
    s = sign * rng.uniform(0.5, 1.5, size=n)
    return s[:, None] * u[None, :], y


def _gen_degenerate(cfg: DataConfig, sizes: tuple[int, int, int], rngs: list) -> tuple:
    n, m, d = sizes
    separable = cfg.separable
    if separable is None:
        separable = not (cfg.label_noise or 0.0) > 0
    if separable and cfg.label_noise:
        raise UserInputError(
            "data.label_noise must be 0 or unset when data.separable is true (kind 'degenerate')"
        )
    noise = 0.0 if separable else (0.2 if cfg.label_noise is None else cfg.label_noise)
    if not separable and noise == 0:
        raise UserInputError(
            "data.label_noise must be > 0 for non-separable degenerate data (data.separable: false)"
        )
    if not separable and n < 4:
        raise UserInputError(
            f"data.n_train must be >= 4 for non-separable degenerate data (got {n})"
        )
    p = 0.5 if cfg.p_positive is None else cfg.p_positive
    u = _unit_vector(rngs[0], d)
    X, y = _degenerate_split(rngs[1], u, n, p, noise, strict=True)
    Xt, yt = _degenerate_split(rngs[2], u, m, p, noise, strict=False)
    frac_agree = float(np.mean(np.sign(X @ u) == y))
    params: dict[str, Any] = {"separable": bool(separable), "label_noise": noise}
    params |= {"p_positive": p, "magnitudes": "U(0.5, 1.5)", "frac_agree": frac_agree}
    return X, y, Xt, yt, params


def _gen_overlap(cfg: DataConfig, sizes: tuple[int, int, int], rngs: list) -> tuple:
    n, m, d = sizes
    shift = 1.0 if cfg.shift is None else cfg.shift
    p = 0.5 if cfg.p_positive is None else cfg.p_positive
    noise = 0.0 if cfg.label_noise is None else cfg.label_noise
    e = _unit_vector(rngs[0], d)

    def draw(rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray]:
        y = _labels(rng, k, p)
        return y[:, None] * (shift / 2) * e + rng.standard_normal((k, d)), y

    X, y = draw(rngs[1], n)
    y = np.where(_flip_mask(rngs[1], n, noise), -y, y)
    Xt, yt = draw(rngs[2], m)
    return X, y, Xt, yt, {"shift": shift, "p_positive": p, "label_noise": noise}


def _gen_separable(cfg: DataConfig, sizes: tuple[int, int, int], rngs: list) -> tuple:
    n, m, d = sizes
    margin = 1.0 if cfg.margin is None else cfg.margin
    p = 0.5 if cfg.p_positive is None else cfg.p_positive
    w = _unit_vector(rngs[0], d)

    def draw(rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray]:
        y = _labels(rng, k, p)
        z = rng.standard_normal((k, d))
        along = z @ w
        # Replace the component along w by y·(margin/2 + |·|): y⟨w, x⟩ ≥ margin/2.
        x = z + ((y * (margin / 2 + np.abs(along))) - along)[:, None] * w[None, :]
        return x, y

    X, y = draw(rngs[1], n)
    Xt, yt = draw(rngs[2], m)
    return X, y, Xt, yt, {"margin": margin, "p_positive": p}


def _gen_gaussian_mixture(cfg: DataConfig, sizes: tuple[int, int, int], rngs: list) -> tuple:
    n, m, d = sizes
    mean_norm = float(d**0.26) if cfg.mean_norm is None else cfg.mean_norm
    p = 0.5 if cfg.p_positive is None else cfg.p_positive
    noise = 0.0 if cfg.label_noise is None else cfg.label_noise
    mu = mean_norm * _unit_vector(rngs[0], d)

    def draw(rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray]:
        y = _labels(rng, k, p)
        return y[:, None] * mu[None, :] + rng.standard_normal((k, d)), y

    X, y = draw(rngs[1], n)
    # The clean label placed x; only the observed training label is flipped.
    y = np.where(_flip_mask(rngs[1], n, noise), -y, y)
    Xt, yt = draw(rngs[2], m)
    params = {"mean_norm": mean_norm, "p_positive": p, "label_noise": noise}
    return X, y, Xt, yt, params | {"test_label_noise": 0.0}


_GENERATORS = {
    "degenerate": _gen_degenerate,
    "overlap": _gen_overlap,
    "separable": _gen_separable,
    "gaussian_mixture": _gen_gaussian_mixture,
}


# -------------------------------------------------------------------- sklearn
def _split_sizes(cfg: DataConfig, total: int, what: str) -> tuple[int, int]:
    """(n_train, n_test) for splitting ``total`` shuffled samples.

    With ``test_fraction`` (default 0.25) held = round(test_fraction·total).
    n_train: ``n_train`` if given; else total − ``n_test`` if only ``n_test``
    is given; else total − held. n_test: ``n_test`` if given; else held when
    ``test_fraction`` is given or ``n_train`` is not; else the rest.
    """
    tf = DEFAULT_TEST_FRACTION if cfg.test_fraction is None else cfg.test_fraction
    held = round(tf * total)
    if cfg.n_test is not None and cfg.n_test > total:
        raise UserInputError(f"data.n_test={cfg.n_test} exceeds the {total} samples of {what}")
    if cfg.n_train is not None:
        n_tr = cfg.n_train
    elif cfg.n_test is not None and cfg.test_fraction is None:
        n_tr = total - cfg.n_test
    else:
        n_tr = total - held
    if cfg.n_test is not None:
        n_te = cfg.n_test
    elif cfg.test_fraction is not None or cfg.n_train is None:
        n_te = held
    else:
        n_te = max(total - n_tr, 0)
    if n_tr > total:
        raise UserInputError(f"data.n_train={n_tr} exceeds the {total} samples of {what}")
    if n_tr < 1:
        key = "data.n_test" if cfg.n_test is not None else "data.test_fraction"
        raise UserInputError(f"{key} leaves no training samples out of the {total} of {what}")
    if n_tr + n_te > total:
        raise UserInputError(
            f"data.n_train + data.n_test = {n_tr} + {n_te} exceeds the {total} samples of {what}"
        )
    return n_tr, n_te


def _sklearn_groups(cfg: DataConfig, name: str, present: list[int]) -> tuple[list[int], list[int]]:
    if cfg.classes is None:
        pos, neg = _SKLEARN_DEFAULT_CLASSES[name]
        return pos, (neg if neg is not None else [c for c in present if c not in pos])
    cls = cfg.classes
    assert cls != "all"  # handled by _load_sklearn
    if all(isinstance(c, int) for c in cls):
        if len(cls) != 2:
            raise UserInputError(
                f"data.classes: a flat list must be [a, b] (class a → +1, b → −1), got {cls}"
            )
        groups: list[list[int]] = [[int(cls[0])], [int(cls[1])]]  # type: ignore[arg-type]
    else:
        groups = [list(g) for g in cls]  # type: ignore[arg-type,misc]
        if len(groups) != 2 or not all(groups):
            raise UserInputError(
                f"data.classes must be two non-empty groups [[+1 classes], [-1 classes]], got {cls}"
            )
    for c in groups[0] + groups[1]:
        if c not in present:
            raise UserInputError(
                f"data.classes: class {c} does not exist in '{name}' (classes {present})"
            )
    both = set(groups[0]) & set(groups[1])
    if both:
        raise UserInputError(f"data.classes: class {sorted(both)} is in both groups")
    return groups[0], groups[1]


def _load_sklearn(cfg: DataConfig, rng: np.random.Generator) -> tuple:
    from sklearn import datasets

    name = (cfg.name or "").removeprefix("load_")
    if name not in SKLEARN_NAMES:
        raise UserInputError(
            f"data.name '{cfg.name}' is not a bundled scikit-learn data set; "
            f"valid: {', '.join(SKLEARN_NAMES)}"
        )
    X, target = getattr(datasets, f"load_{name}")(return_X_y=True)
    present = sorted(int(c) for c in np.unique(target))
    if cfg.classes == "all":  # multiclass: labels are the class indices 0…K−1
        if cfg.d is not None and cfg.d != X.shape[1]:
            raise UserInputError(f"data.d={cfg.d} but '{name}' has {X.shape[1]} features")
        n_tr, n_te = _split_sizes(cfg, len(target), f"'{name}' (all {len(present)} classes)")
        perm = rng.permutation(len(target))
        tr, te = perm[:n_tr], perm[n_tr : n_tr + n_te]
        y = target.astype(np.float64)
        X = X.astype(np.float64)
        params = {"name": name, "classes": "all", "n_classes": len(present)}
        params["available"] = len(y)
        params |= _SKLEARN_IMAGES.get(name, {})
        return X[tr], y[tr], X[te], y[te], params
    pos, neg = _sklearn_groups(cfg, name, present)
    keep = np.isin(target, pos + neg)
    X, y = X[keep].astype(np.float64), np.where(np.isin(target[keep], pos), 1.0, -1.0)
    if cfg.d is not None and cfg.d != X.shape[1]:
        raise UserInputError(f"data.d={cfg.d} but '{name}' has {X.shape[1]} features")
    n_tr, n_te = _split_sizes(cfg, len(y), f"'{name}' (classes {pos} vs {neg})")
    perm = rng.permutation(len(y))
    tr, te = perm[:n_tr], perm[n_tr : n_tr + n_te]
    params = {"name": name, "classes": [pos, neg], "available": len(y)}
    params |= _SKLEARN_IMAGES.get(name, {})
    return X[tr], y[tr], X[te], y[te], params


# ---------------------------------------------------------------- torchvision
def _pick(
    rng: np.random.Generator, keep: np.ndarray, n: int | None, key: str, what: str
) -> np.ndarray:
    """Indices of a random subset of size ``n`` of the rows where ``keep`` (file order kept)."""
    rows = np.flatnonzero(keep)
    if n is None:
        return rows
    if n > len(rows):
        raise UserInputError(f"{key}={n} exceeds the {len(rows)} images of {what}")
    return np.sort(rng.permutation(rows)[:n])


def _load_torchvision(cfg: DataConfig, base_dir: Path | None, rngs: list) -> tuple:
    """MNIST, FashionMNIST or CIFAR-10 from torchvision's files under ``data.root``
    (:mod:`implicit_bias.data_torchvision`); pixels ÷255; ``classes`` as for sklearn;
    ``n_train``/``n_test`` random subsets of the train/test split, redrawn per seed."""
    from .data_torchvision import (
        N_CLASSES,
        TORCHVISION_SETS,
        canonical_name,
        download,
        files_present,
        read_torchvision,
    )

    name = canonical_name(cfg.name)
    # resolved: messages and the description name the folder plainly
    root = _against(cfg.root or "", base_dir).resolve()
    if cfg.download and not files_present(name, root):
        download(name, root)
    X8, y8, Xt8, yt8 = read_torchvision(name, root)
    shape = list(TORCHVISION_SETS[name])
    if cfg.d is not None and cfg.d != X8.shape[1]:
        raise UserInputError(f"data.d={cfg.d} but {name} has {X8.shape[1]} pixels per image")
    params: dict[str, Any] = {"name": name, "root": str(root), "image_shape": shape}
    if cfg.classes == "all":
        keep, keep_t = np.ones(len(y8), bool), np.ones(len(yt8), bool)
        what = f"{name} (all {N_CLASSES} classes)"
        params |= {"classes": "all", "n_classes": N_CLASSES}
    else:
        pos, neg = _sklearn_groups(cfg, name, list(range(N_CLASSES)))
        keep, keep_t = np.isin(y8, pos + neg), np.isin(yt8, pos + neg)
        what = f"{name} (classes {pos} vs {neg})"
        params["classes"] = [pos, neg]
    params |= {"available": int(keep.sum()), "available_test": int(keep_t.sum())}
    tr = _pick(rngs[1], keep, cfg.n_train, "data.n_train", f"the training split of {what}")
    te = _pick(rngs[2], keep_t, cfg.n_test, "data.n_test", f"the test split of {what}")
    # only the chosen rows become float64 (all of MNIST would be 0.4 GB)
    X, Xt = X8[tr].astype(np.float64) / 255.0, Xt8[te].astype(np.float64) / 255.0
    y, yt = y8[tr].astype(np.float64), yt8[te].astype(np.float64)
    if cfg.classes != "all":
        y, yt = np.where(np.isin(y, pos), 1.0, -1.0), np.where(np.isin(yt, pos), 1.0, -1.0)
    return X, y, Xt, yt, params | {"pixel_scale": "1/255"}


# ----------------------------------------------------------------------- file
def _against(path: str, base_dir: Path | None) -> Path:
    """``path`` with ``~`` expanded, relative to ``base_dir`` (the config's folder) or the cwd."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base_dir if base_dir is not None else Path.cwd()) / p


def _resolve(path: str, base_dir: Path | None, key: str) -> Path:
    p = _against(path, base_dir)
    if not p.exists():
        raise UserInputError(f"{key}: file not found: {p}")
    if not p.is_file():
        raise UserInputError(f"{key}: not a file: {p}")
    return p


def _read_npy(p: Path, key: str) -> np.ndarray:
    try:
        return np.load(p, allow_pickle=False)
    except Exception as err:  # numpy raises many types for bad files; report them as one
        raise UserInputError(
            f"{key}: cannot read {p} as .npy ({type(err).__name__}: {err})"
        ) from None


def _read_npz(p: Path) -> dict[str, np.ndarray]:
    where = f"data.path: {p}"
    try:
        with np.load(p, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise UserInputError(f"{where}: is a .npy array, not an .npz archive")
            keys = list(f.files)
            missing = [k for k in ("X_train", "y_train") if k not in keys]
            if missing:
                raise UserInputError(
                    f"{where}: missing key {missing[0]!r} (found: {', '.join(keys) or 'none'}; "
                    "need X_train, y_train, optional X_test, y_test)"
                )
            return {k: f[k] for k in _ARRAY_KEYS if k in keys}
    except UserInputError:
        raise
    except Exception as err:  # BadZipFile, ValueError (pickled), OSError, ...
        raise UserInputError(
            f"{where}: cannot read as .npz ({type(err).__name__}: {err})"
        ) from None


def _read_csv(p: Path, label_column: str | int | None) -> tuple[np.ndarray, np.ndarray]:
    where = f"data.path: {p}"
    try:
        text = p.read_text(encoding="utf-8-sig")  # Excel writes a byte-order mark
    except (OSError, UnicodeDecodeError) as err:
        raise UserInputError(f"{where}: cannot read as text ({type(err).__name__})") from None
    rows = [
        (i + 1, r) for i, r in enumerate(csv.reader(io.StringIO(text))) if any(c.strip() for c in r)
    ]
    if not rows:
        raise UserInputError(f"{where}: the CSV file is empty")

    def numbers(row: list[str]) -> list[float] | None:
        try:
            return [float(c) for c in row]
        except ValueError:
            return None

    header: list[str] | None = None
    first = rows[0][1]
    # A first row with no number in it is a header (a row with a number and an ``NA``
    # or ``0x10`` is a data row with a bad cell, reported below, not a header)
    if all(numbers([c]) is None for c in first):
        header = [c.strip() for c in rows[0][1]]
        rows = rows[1:]
    if not rows:
        raise UserInputError(f"{where}: the CSV file has a header but no data rows")
    width = len(header) if header is not None else len(rows[0][1])
    data = np.empty((len(rows), width))
    for r, (line, row) in enumerate(rows):
        if len(row) != width:
            raise UserInputError(f"{where}: line {line} has {len(row)} columns, expected {width}")
        vals = numbers(row)
        if vals is None:
            bad = next(c for c in row if numbers([c]) is None)
            raise UserInputError(f"{where}: line {line}: {bad.strip()!r} is not a number")
        data[r] = vals
    if width < 2:
        raise UserInputError(f"{where}: need at least 2 columns (features and a label)")

    col = label_column
    if col is None:
        idx = width - 1
    elif isinstance(col, int):
        if not -width <= col < width:
            raise UserInputError(
                f"data.label_column={col} is out of range for {width} columns of {p}"
            )
        idx = col % width
    elif header is not None and col in header:
        idx = header.index(col)
    elif col.strip().lstrip("-").isdigit():
        return _read_csv(p, int(col))
    elif header is None:
        raise UserInputError(f"data.label_column '{col}': {p} has no header row")
    else:
        raise UserInputError(
            f"data.label_column '{col}' is not a column of {p} (columns: {', '.join(header)})"
        )
    return np.delete(data, idx, axis=1), data[:, idx]


def _subsample(
    rng: np.random.Generator, X: np.ndarray, y: np.ndarray, n: int | None, key: str, p: Path
) -> tuple[np.ndarray, np.ndarray]:
    if n is None or n == len(y):
        return X, y
    if n > len(y):
        raise UserInputError(f"{key}={n} exceeds the {len(y)} samples available in {p}")
    keep = np.sort(rng.permutation(len(y))[:n])  # random subset, file order kept
    return X[keep], y[keep]


def _load_file(cfg: DataConfig, base_dir: Path | None, rng: np.random.Generator) -> tuple:
    p = _resolve(cfg.path or "", base_dir, "data.path")
    suffix = p.suffix.lower()
    where = f"data.path: {p}"
    Xt = yt = None
    image: list[int] | None = None
    if suffix == ".npz":
        arrays = _read_npz(p)
        X, y = arrays["X_train"], arrays["y_train"]
        Xt, yt = arrays.get("X_test"), arrays.get("y_test")
        if np.ndim(X) == 4:  # images (n, C, H, W): kept flattened, their shape recorded
            image = [int(v) for v in np.shape(X)[1:]]
            X = np.reshape(X, (np.shape(X)[0], -1))
            if Xt is not None and np.ndim(Xt) == 4:
                if list(np.shape(Xt)[1:]) != image:
                    raise UserInputError(
                        f"{where}: X_test images are {list(np.shape(Xt)[1:])}, X_train {image}"
                    )
                Xt = np.reshape(Xt, (np.shape(Xt)[0], -1))
    elif suffix == ".npy":
        if not cfg.labels:
            raise UserInputError(
                f"data.labels is required when data.path is a .npy file ({p}): the labels array"
            )
        X = _read_npy(p, "data.path")
        lp = _resolve(cfg.labels, base_dir, "data.labels")
        y = _read_npy(lp, "data.labels")
        y = _check_y(y, f"data.labels: {lp}", "labels")
        where = f"data.path: {p} with data.labels: {lp}"
    elif suffix == ".csv":
        X, y = _read_csv(p, cfg.label_column)
    else:
        raise UserInputError(
            f"data.path: unsupported file type '{p.suffix}' ({p}); use .npz, .npy or .csv"
        )

    multi = _is_multiclass(y, yt)
    X, y, Xt, yt = _checked(X, y, Xt, yt, where)
    classes = np.unique(y)
    if len(classes) < 2:  # the real problem first, before any size
        raise UserInputError(
            f"{where}: every training label is {classes[0]:+g}; a classifier needs both classes"
        )
    if cfg.d is not None and cfg.d != X.shape[1]:
        raise UserInputError(f"data.d={cfg.d} but {p} has {X.shape[1]} features")
    split = False
    if len(yt) == 0 and cfg.test_fraction:
        # No test set in the file: hold out a shuffled fraction of it.
        held = round(cfg.test_fraction * len(y))
        if held >= len(y):
            raise UserInputError(
                f"data.test_fraction={cfg.test_fraction} leaves no training data in {p}"
            )
        perm = rng.permutation(len(y))
        te, tr = np.sort(perm[:held]), np.sort(perm[held:])
        X, y, Xt, yt = X[tr], y[tr], X[te], y[te]
        split = True
    if len(yt) == 0 and cfg.n_test:
        raise UserInputError(
            f"data.n_test={cfg.n_test} but {p} has no test split: add X_test/y_test to the "
            "file or hold out part of it with data.test_fraction"
        )
    X, y = _subsample(rng, X, y, cfg.n_train, "data.n_train", p)
    Xt, yt = _subsample(rng, Xt, yt, cfg.n_test, "data.n_test", p)
    params = {"path": str(p), "format": suffix[1:], "split_from_train": split}
    if image is not None:
        params["image_shape"] = image
    if multi:  # K from the whole file, before any subsample drops a class
        params["n_classes"] = (
            int(classes.max()) + 1 if len(yt) == 0 else int(max(classes.max(), yt.max()) + 1)
        )
    if suffix == ".npy":
        params["labels"] = str(lp)
    if suffix == ".csv":
        params["label_column"] = cfg.label_column
    return X, y, Xt, yt, params


# ----------------------------------------------------------------------- main
def make_dataset(cfg: DataConfig, base_dir: Path | None = None) -> Dataset:
    """Build the data of one experiment (see the module docstring for each kind).

    Args:
        cfg: the ``data`` section of the config.
        base_dir: where relative ``data.path``/``data.labels`` are resolved
            (the config file's folder, say); the current directory if None.

    Returns:
        A :class:`Dataset`, a deterministic function of ``cfg``.

    Raises:
        UserInputError: one line naming the key or file that is wrong.
    """
    if cfg.seed < 0:
        raise UserInputError(f"data.seed must be >= 0 (got {cfg.seed})")
    # Independent streams: direction, train, test (so n_test never moves the train set).
    rngs = np.random.default_rng(cfg.seed).spawn(3)
    desc: dict[str, Any] = {"kind": cfg.kind, "seed": cfg.seed, "normalize": cfg.normalize}
    if cfg.kind in _GENERATORS:
        sizes = (
            DEFAULT_N_TRAIN if cfg.n_train is None else cfg.n_train,
            DEFAULT_N_TEST if cfg.n_test is None else cfg.n_test,
            DEFAULT_D if cfg.d is None else cfg.d,
        )
        X, y, Xt, yt, params = _GENERATORS[cfg.kind](cfg, sizes, rngs)
        source = f"data.kind '{cfg.kind}'"
    elif cfg.kind == "sklearn":
        X, y, Xt, yt, params = _load_sklearn(cfg, rngs[1])
        source = f"data.name '{cfg.name}'"
    elif cfg.kind == "torchvision":
        X, y, Xt, yt, params = _load_torchvision(cfg, base_dir, rngs)
        source = f"data.name '{params['name']}' under data.root {params['root']}"
    elif cfg.kind == "file":
        X, y, Xt, yt, params = _load_file(cfg, base_dir, rngs[1])
        source = f"data.path: {params['path']}"
    else:  # pragma: no cover - the config's Literal rules this out
        raise UserInputError(f"data.kind: unknown kind '{cfg.kind}'")
    X, y, Xt, yt = _checked(X, y, Xt, yt, source, "n_classes" in params)
    X, Xt = _normalize(X, Xt, cfg.normalize)
    _check_magnitude(X, Xt, source)
    desc |= params
    desc |= {"n_train": len(y), "n_test": len(yt), "d": int(X.shape[1])}
    return Dataset(X, y, Xt, yt, json.loads(json.dumps(desc)))


#: largest |x| a data set may hold (after ``data.normalize``): beyond it the products
#: of training and the Gram/SVM diagnostics overflow (float32 ends at 3.4e38)
MAX_ABS_VALUE = 1e30


def _check_magnitude(X: np.ndarray, Xt: np.ndarray, source: str) -> None:
    """Refuse finite but huge inputs, which no run could train on.

    Raises:
        UserInputError: naming the data source and the largest value.
    """
    big = max((float(np.max(np.abs(a))) for a in (X, Xt) if a.size), default=0.0)
    if big > MAX_ABS_VALUE:
        raise UserInputError(
            f"{source}: inputs as large as {big:.3g} (at most {MAX_ABS_VALUE:.0e} is usable: "
            "training and the data diagnostics would overflow); rescale the data or set "
            "data.normalize: standardize"
        )


# ---------------------------------------------------------------- save/load
def save_dataset(ds: Dataset, path: Path) -> None:
    """Write ``ds`` to ``path`` as .npz (the four arrays and ``description`` as JSON).

    Written to a unique temporary file beside it first and renamed, so a reader
    never sees half a file and a link planted at ``path`` is replaced, not followed.
    """
    from ._atomic import atomic_write_bytes

    arrays: dict[str, Any] = {k: np.asarray(getattr(ds, k), dtype=np.float64) for k in _ARRAY_KEYS}
    arrays["description"] = np.array(json.dumps(ds.description))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_dataset(path: Path) -> Dataset:
    """Read a :class:`Dataset` written by :func:`save_dataset`, re-running the checks."""
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"dataset file not found: {p}")
    arrays = _read_npz(p)
    try:
        with np.load(p, allow_pickle=False) as f:
            desc = json.loads(str(f["description"])) if "description" in f.files else {}
    except Exception as err:
        raise UserInputError(
            f"{p}: cannot read the dataset description ({type(err).__name__})"
        ) from None
    ds = data_from_arrays(
        arrays["X_train"],
        arrays["y_train"],
        arrays.get("X_test"),
        arrays.get("y_test"),
        source=str(p),
        multiclass="n_classes" in desc,
    )
    return Dataset(ds.X_train, ds.y_train, ds.X_test, ds.y_test, desc)
