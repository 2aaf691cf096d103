"""No host synchronisation inside the step loop (issue 12).

Between the first and the last eval step the engine must not read a tensor
back to the host or build a tensor from host values: on a GPU either one
waits for the device (or copies from pageable memory) every step. On the CPU
this is checked by a proxy: the Python-level ways of doing so (``.item()``,
``bool(t)``, ``.tolist()``, ``.cpu()``, ``.numpy()``, ``torch.tensor``, …)
raise while the loop runs. On a GPU (``-m cuda``) the same steps run under
``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from implicit_bias import batched, metrics
from implicit_bias.config import load_config
from implicit_bias.engine import Trainer
from implicit_bias.sweep import make_plan

STEPS = 12

CASES = {
    # the general layer-by-layer path, a run diverging (lr 1e9)
    "relu": {"model": {"depth": 3, "width": 16, "activation": "relu"}},
    # the matrix-chain path of linear nets
    "linear": {"model": {"depth": 3, "width": 16, "activation": "linear"}},
    # shared wide inputs (the addmm_ update) and a fixed last layer
    "wide": {
        "data": {"kind": "gaussian_mixture", "n_train": 10, "n_test": 4, "d": 64},
        "model": {
            "depth": 2,
            "width": 16,
            "activation": "leaky_relu",
            "parametrization": "direct",
            "last_layer": "fixed_sign",
        },
    },
}


def _config(case: dict, device: str = "cpu"):
    raw = {
        "data": {"kind": "overlap", "n_train": 24, "n_test": 8, "d": 5},
        "train": {"steps": STEPS, "lr": 0.5, "device": device},
        # eval only at 0 and STEPS: every step in between is a plain training step
        "metrics": {"every": STEPS, "sharpness": False, "dense_early": False},
        "sweep": {"train.lr": [0.5, 1.0e9], "seed": [0, 1]},
    }
    for key, val in case.items():
        raw[key] = {**raw.get(key, {}), **val}
    return load_config(raw)


@contextlib.contextmanager
def _armed_between_first_and_last_eval(monkeypatch, arm, disarm):
    """Call ``arm()`` after the eval at step 0 and ``disarm()`` before the eval at the
    last step; count the training steps taken while armed."""
    original = metrics.step_metrics
    state = {"steps": 0, "armed": False}

    def wrapped(ctx):
        if state["armed"]:
            disarm()
            state["armed"] = False
        out = original(ctx)
        if ctx.step == 0:
            arm()
            state["armed"] = True
        return out

    descend = batched.descend

    def counted(*args, **kwargs):
        state["steps"] += state["armed"]
        return descend(*args, **kwargs)

    monkeypatch.setattr(metrics, "step_metrics", wrapped)
    monkeypatch.setattr(batched, "descend", counted)
    try:
        yield state
    finally:
        if state["armed"]:
            disarm()


_FORBIDDEN_METHODS = (
    "item",
    "tolist",
    "cpu",
    "numpy",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
)
_FORBIDDEN_FUNCTIONS = ("tensor", "as_tensor", "from_numpy")


@pytest.mark.parametrize("name", list(CASES))
def test_step_loop_has_no_host_reads_cpu_proxy(name, monkeypatch):
    cfg = _config(CASES[name])
    runs = make_plan(cfg).runs
    expected = Trainer(runs).train()  # unpatched, for the equality below

    calls: list[str] = []
    patches = contextlib.ExitStack()

    def arm():
        def forbid(label, fn):
            def raiser(*args, **kwargs):
                calls.append(label)
                raise AssertionError(f"{label} called inside the step loop")

            return raiser

        mp = patches.enter_context(pytest.MonkeyPatch.context())
        for m in _FORBIDDEN_METHODS:
            mp.setattr(torch.Tensor, m, forbid(f"Tensor.{m}", getattr(torch.Tensor, m)))
        for f in _FORBIDDEN_FUNCTIONS:
            mp.setattr(torch, f, forbid(f"torch.{f}", getattr(torch, f)))

    with _armed_between_first_and_last_eval(monkeypatch, arm, patches.close) as state:
        res = Trainer(runs).train()
    assert not calls
    assert state["steps"] == STEPS  # every update (steps 0 … STEPS−1) ran under the guard
    # one run diverged, one did not, and the masks gave the same numbers as before
    assert (res.per_run["divergence_step"] >= 0).any()
    assert (res.per_run["divergence_step"] < 0).any()
    for key, val in expected.per_iteration.items():
        np.testing.assert_array_equal(res.per_iteration[key], val)
    for key, val in expected.weights.items():
        np.testing.assert_array_equal(res.weights[key], val)


def test_proxy_catches_a_host_read(monkeypatch):
    """The proxy is not vacuous: a ``.item()`` in the step loop is caught."""
    original = batched.descend

    def reads_back(pas, params, y, spec, loss_kind, scale):
        scale.max().item()
        return original(pas, params, y, spec, loss_kind, scale)

    monkeypatch.setattr(batched, "descend", reads_back)
    patches = contextlib.ExitStack()

    def arm():
        mp = patches.enter_context(pytest.MonkeyPatch.context())

        def raiser(*a, **k):
            raise AssertionError("item")

        mp.setattr(torch.Tensor, "item", raiser)

    with _armed_between_first_and_last_eval(monkeypatch, arm, patches.close):
        with pytest.raises(AssertionError, match="item"):
            Trainer(make_plan(_config(CASES["relu"])).runs).train()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", list(CASES))
def test_step_loop_does_not_synchronise_on_cuda(name, monkeypatch):
    cfg = _config(CASES[name], device="cuda")
    runs = make_plan(cfg).runs
    Trainer(runs).train()  # warm-up: lazy CUDA initialisation and kernel loading

    def arm():
        torch.cuda.set_sync_debug_mode("error")

    def disarm():
        torch.cuda.set_sync_debug_mode(0)

    with _armed_between_first_and_last_eval(monkeypatch, arm, disarm) as state:
        res = Trainer(runs).train()
    assert state["steps"] == STEPS
    assert (res.per_run["divergence_step"] >= 0).any()
