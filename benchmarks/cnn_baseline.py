"""The hand-written per-run loop for the CNN row of ``bench`` (issue 17).

One run at a time: Cohen et al.'s convnet as a ``torch.nn.Sequential``
(:func:`implicit_bias.models.cnn.convnet`, PyTorch's init under the run
seed), MSE on one-hot targets (½ Σ_k, mean over examples), ``torch.optim.SGD``
on the full batch, and the sharpness every ``metrics.every`` steps by power
iteration (``metrics.sharpness.iters``) on double-backward Hessian-vector
products. It reads the same YAML as ``implicit-bias run``::

    python benchmarks/cnn_baseline.py CONFIG [--device cuda]
"""

from __future__ import annotations

import argparse
import itertools
import math

import torch

from implicit_bias.config import load_config
from implicit_bias.data import make_dataset
from implicit_bias.models.cnn import convnet


def sharpness(net, loss_fn, iters: int) -> float:
    """Top Hessian eigenvalue (largest magnitude) by power iteration on HVPs."""
    ps = list(net.parameters())
    g = torch.autograd.grad(loss_fn(), ps, create_graph=True)
    v = [torch.randn_like(p) for p in ps]
    lam = math.nan
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(g, ps, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    dev = torch.device(args.device)
    data = make_dataset(cfg.data)
    image = data.image_shape
    assert image is not None, "the CNN baseline needs image data"
    K = data.n_classes
    X = torch.as_tensor(data.X_train, dtype=torch.float32, device=dev).reshape(-1, *image)
    Y = torch.nn.functional.one_hot(torch.as_tensor(data.y_train).long(), K).float().to(dev)
    m, t = cfg.model, cfg.train
    iters = cfg.metrics.sharpness.iters if cfg.metrics.sharpness else 20
    for lr, seed in itertools.product(
        cfg.sweep.get("train.lr", [t.lr]), cfg.sweep.get("seed", [0])
    ):
        torch.manual_seed(seed)
        net = convnet(image, K, m.channels, m.activation, m.pool).to(dev)
        opt = torch.optim.SGD(net.parameters(), lr=lr)

        def loss_fn(net=net):
            return 0.5 * (net(X) - Y).square().sum(1).mean()

        for step in range(t.steps + 1):
            if step % cfg.metrics.every == 0 or step == t.steps:
                sharpness(net, loss_fn, iters)
            if step == t.steps:
                break
            opt.zero_grad()
            loss_fn().backward()
            opt.step()


if __name__ == "__main__":
    main()
