"""The hand-written per-run baseline of issue 5: what people write without a sweep engine.

One run at a time: a ``torch.nn.Sequential`` of bias-free ``torch.nn.Linear``
layers (with ``torch.nn.ReLU`` between them for ``activation: relu``)
initialised N(0, 1/fan_in) (the ``standard`` parametrization), logistic
loss, ``torch.optim.SGD`` on the full batch, and the sharpness every
``metrics.every`` steps by power iteration on double-backward Hessian-vector
products. Deliberately not optimised.

It reads the same YAML as ``implicit-bias run`` (data, model sizes, steps,
``sweep`` over ``train.lr`` and ``seed``) and builds the same data with
:func:`implicit_bias.data.make_dataset`::

    python benchmarks/baseline.py benchmarks/reference.yaml [--device cuda]
        [--threads N] [--flush-denormal]

(``--threads``/``--flush-denormal`` are for comparisons only; ``bench`` uses neither.)
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

import torch
import torch.nn.functional as F
from torch import nn


def make_model(
    d: int, depth: int, width: int, seed: int, init=None, activation: str = "linear"
) -> nn.Sequential:
    """Bias-free MLP (linear or ReLU), N(0, 1/fan_in) weights (or copies of ``init``)."""
    torch.manual_seed(seed)
    dims = [d] + [width] * (depth - 1) + [1]
    layers = [nn.Linear(dims[i], dims[i + 1], bias=False) for i in range(depth)]
    with torch.no_grad():
        for i, layer in enumerate(layers):
            if init is None:
                nn.init.normal_(layer.weight, std=1 / math.sqrt(layer.in_features))
            else:
                layer.weight.copy_(init[i])
    if activation == "linear":
        return nn.Sequential(*layers)
    mods: list[nn.Module] = []
    for layer in layers[:-1]:
        mods += [layer, nn.ReLU()]
    return nn.Sequential(*mods, layers[-1])


def sharpness(model: nn.Module, X, y, iters: int, seed: int) -> float:
    """Top Hessian eigenvalue of the training loss by power iteration on HVPs."""
    params = list(model.parameters())
    loss = F.softplus(-y * model(X).squeeze(-1)).mean()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen).to(p) for p in params]
    norm = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / norm for u in v]
    eig = 0.0
    for _ in range(iters):
        gv = sum((g * u).sum() for g, u in zip(grads, v, strict=True))
        hv = torch.autograd.grad(gv, params, retain_graph=True)
        eig = sum((h * u).sum() for h, u in zip(hv, v, strict=True)).item()
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        v = [h / norm for h in hv]
    return eig


def train_run(
    X,
    y,
    lr,
    seed,
    depth=3,
    width=64,
    steps=1000,
    every=50,
    iters=20,
    init=None,
    activation="linear",
    optimizer=None,
):
    """Train one run; return its loss at every step and its sharpness at the eval steps.

    ``optimizer``: ``None`` for plain GD (``torch.optim.SGD``), else the config's
    ``train`` mapping with ``optimizer: adam`` (``torch.optim.Adam`` with its
    ``beta1``, ``beta2``, ``eps``; bias correction on).
    """
    model = make_model(X.shape[1], depth, width, seed, init, activation).to(X)
    if optimizer is None or optimizer.get("optimizer", "gd") == "gd":
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    else:
        assert optimizer["optimizer"] == "adam", "the baseline runs gd or adam"
        assert optimizer.get("bias_correction", True), "torch.optim.Adam corrects its bias"
        betas = (optimizer.get("beta1", 0.9), optimizer.get("beta2", 0.999))
        opt = torch.optim.Adam(
            model.parameters(), lr=lr, betas=betas, eps=optimizer.get("eps", 1e-8)
        )
    losses, sharps = [], []
    for t in range(steps + 1):
        if iters and (t % every == 0 or t == steps):
            sharps.append(sharpness(model, X, y, iters, seed))
        loss = F.softplus(-y * model(X).squeeze(-1)).mean()
        losses.append(loss.item())
        if t == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses, sharps


def main(argv=None) -> None:
    """Run every (lr, seed) of a config one after the other and print the wall time."""
    import yaml

    from implicit_bias.config import DataConfig
    from implicit_bias.data import make_dataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--flush-denormal", action="store_true", help="flush float32 subnormals (not the default)"
    )
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)
    torch.set_flush_denormal(args.flush_denormal)
    if args.threads:
        torch.set_num_threads(args.threads)
    with open(args.config) as f:
        cfg = yaml.safe_load(f)
    model, train, metrics = cfg["model"], cfg["train"], cfg["metrics"]
    activation = model.get("activation", "linear")
    assert activation in ("linear", "relu"), "the baseline is a linear or ReLU net"
    assert model.get("parametrization") == "standard", "the baseline is N(0, 1/fan_in)"
    assert train.get("loss", "logistic") == "logistic", "the baseline uses the logistic loss"
    sweep = cfg.get("sweep", {})
    dtype = getattr(torch, train.get("dtype", "float32"))
    data = make_dataset(DataConfig(**cfg["data"]))
    X = torch.tensor(data.X_train, dtype=dtype, device=args.device)
    y = torch.tensor(data.y_train, dtype=dtype, device=args.device)
    sharp = metrics.get("sharpness", {})
    iters = 0 if sharp is False else (sharp or {}).get("iters", 20)
    start = time.perf_counter()
    runs = 0
    for lr, seed in itertools.product(
        sweep.get("train.lr", [train.get("lr")]), sweep.get("seed", [0])
    ):
        losses, _ = train_run(
            X,
            y,
            lr,
            seed,
            model["depth"],
            model["width"],
            train["steps"],
            metrics["every"],
            iters,
            activation=activation,
            optimizer=train,
        )
        runs += 1
    print(
        f"baseline: {runs} runs in {time.perf_counter() - start:.2f} s (final loss {losses[-1]:.4f})"
    )


if __name__ == "__main__":
    main()
