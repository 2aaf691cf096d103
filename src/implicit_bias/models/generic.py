"""The generic backend: any one-run model function, batched over runs by ``torch.func``.

A model is a function ``fn(params, x) -> f`` for **one run** (``params`` a
tuple of tensors, ``x`` the inputs ``(n, …)``, f the outputs ``(n,)``): the
MLP family's :func:`.spec.forward`, or an ``nn.Module`` through
``torch.func.functional_call``. Everything the engine needs is derived from
it and batched with ``vmap`` over a leading run dimension of every parameter
(the model-ensembling recipe of PyTorch's ``torch.func`` tutorial):

- the loss gradient by ``torch.func.grad_and_value``;
- Hessian-vector products forward-over-reverse, ``jvp`` of ``grad``
  (Pearlmutter 1994), and Gauss–Newton products Jᵀ diag(ℓ'') J v / n
  (Schraudolph 2002) as ``jvp`` then ``vjp``;
- the NTK Gram J Jᵀ from the per-sample Jacobian (``jacrev``).

It is slower than the hand-written MLP path (:mod:`.mlp`) but needs no
derivative written by hand; the tests hold the two equal on the MLP family.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value, jacrev, jvp, vjp, vmap

from .._errors import UserInputError
from ..losses import LossName, mean_loss
from .spec import Params

#: a model for one run: (params, x (n, …)) -> f (n,)
ModelFn = Callable[[Params, Tensor], Tensor]
#: draws one run's initial parameters: (seed, init_scale, dtype) -> params
InitFn = Callable[[int, float, torch.dtype], Params]


class GenericBackend:
    """Batched forward, gradient, HVP and NTK of any one-run model function.

    Args:
        fn: the model for one run, ``fn(params, x) -> f (n,)``.
        names: one storage name per parameter tensor (``init_<name>``).
        init_one: draws one run's parameters on the host.
        loss_kind: the training loss (:mod:`implicit_bias.losses`).
        n_params: trained parameters of one run (counted from a draw if not given).
        outputs: K outputs per sample (f ``(n, K)``, labels 0…K−1) or 1 (f ``(n,)``, ±1).
        loop: batch runs by a Python loop over them instead of ``vmap`` (the same
            numbers; on a CPU, ``vmap`` of small convolutions loses to the loop).
    """

    #: no fused backward + update: the engine takes :meth:`grad` and an update rule
    fused_descent = False

    def __init__(
        self,
        fn: ModelFn,
        names: Sequence[str],
        init_one: InitFn,
        loss_kind: LossName,
        n_params: int | None = None,
        outputs: int = 1,
        loop: bool = False,
    ) -> None:
        self.n_outputs = outputs
        self.loop = loop
        self.fn = fn
        self.names = tuple(names)
        self.init_one = init_one
        self.loss_kind = loss_kind
        if n_params is None:
            n_params = sum(p.numel() for p in init_one(0, 1.0, torch.float64))
        self.n_params = n_params

    # ------------------------------------------------------------ one run
    def output_single(self, params: Params, X: Tensor) -> Tensor:
        return self.fn(params, X)

    def _loss_single(self, params: Params, X: Tensor, y: Tensor) -> Tensor:
        return mean_loss(self.fn(params, X), y, self.loss_kind, self.n_outputs)

    def _loss_and_output(self, params: Params, X: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        f = self.fn(params, X)
        return mean_loss(f, y, self.loss_kind, self.n_outputs), f

    # ------------------------------------------------------------- batched
    def _map(self, fn: Callable, in_dims: tuple[int | None, ...]) -> Callable:
        """``fn`` for one run, over every run: ``vmap``, or a loop stacking the results."""
        if not self.loop:
            return vmap(fn, in_dims=in_dims)

        def looped(*args):
            first = next(a for a, d in zip(args, in_dims, strict=True) if d == 0)
            runs = (first[0] if isinstance(first, tuple) else first).shape[0]
            outs = [
                fn(*(_index(a, r) if d == 0 else a for a, d in zip(args, in_dims, strict=True)))
                for r in range(runs)
            ]
            return torch.utils._pytree.tree_map(lambda *xs: torch.stack(xs), *outs)

        return looped

    def outputs(self, params: Params, X: Tensor, x_dim: int | None) -> Tensor:
        """f of every run, ``(R, n)``."""
        return self._map(self.fn, (0, x_dim))(params, X)

    def forward_loss(
        self, params: Params, X: Tensor, y: Tensor, x_dim: int | None
    ) -> tuple[Tensor, Tensor, Params]:
        """Loss ``(R,)``, outputs ``(R, n)`` and, as the pass that :meth:`grad`
        completes, the gradients (one ``grad_and_value`` costs what a forward and
        a backward cost; the loss is needed at every step anyway)."""
        gv = grad_and_value(self._loss_and_output, has_aux=True)
        grads, (loss, f) = self._map(gv, (0, x_dim, x_dim))(params, X, y)
        return loss, f, grads

    def grad(self, pas: Params, params: Params, X: Tensor, y: Tensor, x_dim: int | None) -> Params:
        """Gradients of the mean loss (computed by :meth:`forward_loss`)."""
        return pas

    def descend(self, pas: Params, params: Params, y: Tensor, scale: Tensor) -> Tensor:
        """Not offered (``fused_descent`` is False): the engine applies an update rule."""
        raise NotImplementedError("the generic backend has no fused descent")

    def value_and_grad(
        self, params: Params, X: Tensor, y: Tensor, x_dim: int | None
    ) -> tuple[Tensor, Tensor, Params]:
        return self.forward_loss(params, X, y, x_dim)

    def hvp_operator(
        self,
        params: Params,
        X: Tensor,
        y: Tensor,
        x_dim: int | None,
        gauss_newton: bool = False,
    ) -> Callable[[Params], Params]:
        """``V ↦ H V`` (or the Gauss–Newton G V) of the mean loss of every run."""
        params = tuple(p.detach() for p in params)
        fn, loss_fn, kind, K = self.fn, self._loss_single, self.loss_kind, self.n_outputs

        def hvp_one(p: Params, v: Params, x: Tensor, yy: Tensor) -> Params:
            return jvp(lambda q: grad(loss_fn)(q, x, yy), (p,), (v,))[1]

        def gn_one(p: Params, v: Params, x: Tensor, yy: Tensor) -> Params:
            # Jᵀ (∇²_f L) J v: the loss's Hessian in the outputs (ℓ''/n per sample, or
            # the K×K block of softmax / one-hot MSE) applied by jvp of its gradient
            f, Jv = jvp(lambda q: fn(q, x), (p,), (v,))[:2]

            def loss_of_f(g: Tensor) -> Tensor:
                return mean_loss(g, yy, kind, K)

            HJv = jvp(grad(loss_of_f), (f,), (Jv,))[1]
            return vjp(lambda q: fn(q, x), p)[1](HJv)[0]

        batched = self._map(gn_one if gauss_newton else hvp_one, (0, 0, x_dim, x_dim))
        return lambda V: batched(params, V, X, y)

    def jacobian_gram(
        self, params: Params, X: Tensor, x_dim: int | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``K = J Jᵀ (R, n, n)``, ``dots = J θ (R, n)`` and ``f (R, n)``, J the
        ``(n, P)`` Jacobian of the outputs over the parameters (formed per run);
        with K outputs J is ``(n·K, P)`` (sample-major) and f ``(R, n, K)``."""
        fn = self.fn

        def one(p: Params, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            J = jacrev(fn)(p, x)  # one (n, [K,] *shape) block per parameter
            f = fn(p, x)
            Jf = torch.cat([j.reshape(f.numel(), -1) for j in J], dim=1)  # (n·K, P)
            theta = torch.cat([q.reshape(-1) for q in p])
            return Jf @ Jf.T, Jf @ theta, f

        return self._map(one, (0, x_dim))(params, X)


def _index(a, r: int):
    """Run r of a batched argument (a tensor, or a tuple of them)."""
    return tuple(t[r] for t in a) if isinstance(a, tuple) else a[r]


# ------------------------------------------------------------------ nn.Module
def load_factory(path: str) -> Callable[..., nn.Module]:
    """The factory ``"package.module:factory"`` names (``model.module``).

    Raises:
        UserInputError: one line naming ``model.module`` when it cannot be imported.
    """
    mod_name, _, attr = path.partition(":")
    if not mod_name or not attr:
        raise UserInputError(f"model.module: '{path}' must read 'package.module:factory'")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as err:  # any import failure is the user's path
        raise UserInputError(
            f"model.module: cannot import '{mod_name}' ({type(err).__name__}: {err})"
        ) from None
    factory = getattr(mod, attr, None)
    if not callable(factory):
        raise UserInputError(f"model.module: '{mod_name}' has no callable '{attr}'")
    return factory


def check_deterministic(module: nn.Module) -> None:
    """Refuse modules with buffers (BatchNorm's running statistics) or randomness
    (dropout): full-batch curvature needs a deterministic function of the parameters.

    Raises:
        UserInputError: one line naming the first such submodule.
    """
    for name, sub in module.named_modules():
        what = type(sub).__name__ + (f" ('{name}')" if name else "")
        if any(True for _ in sub.buffers(recurse=False)):
            raise UserInputError(
                f"model: {what} holds buffers (e.g. running statistics); the curvature of "
                "the full-batch loss needs a deterministic function of the parameters"
            )
        if isinstance(sub, nn.modules.dropout._DropoutNd):
            raise UserInputError(
                f"model: {what} is random; the curvature of the full-batch loss needs a "
                "deterministic function of the parameters"
            )


#: the global RNG is seeded to draw a module's own initialisation: one draw at a time
_INIT_LOCK = threading.Lock()


def module_backend(
    build: Callable[[], nn.Module],
    loss_kind: LossName,
    outputs: int,
    input_shape: tuple[int, ...],
    batching: str = "vmap",
    device: str = "cpu",
) -> GenericBackend:
    """A backend for any deterministic ``nn.Module`` (``build()`` makes one).

    The module is called on inputs reshaped to ``(n, *input_shape)`` (images
    ``(C, H, W)``, or ``(d,)``) and must return ``(n, K)`` (K classes) or
    ``(n, 1)``/``(n,)`` (±1 labels). Each run's initial parameters are the
    module's own initialisation drawn with the run seed, times ``init_scale``.

    ``batching``: ``vmap`` or a ``loop`` over runs (the same numbers); ``auto``
    is ``vmap``: on the idle 2-core CPU VM, 32 runs of a two-conv tanh net on
    digits (n 256, 50 steps, sharpness twice) took 10.5 s under ``vmap``, 18.4 s
    as a loop and 14.1 s in a hand-written per-run loop (``implicit-bias bench``,
    best of 3, start-up out; benchmarks/README.md).

    Raises:
        UserInputError: buffers, randomness, or outputs that do not match the labels.
    """
    skeleton = build()
    if batching == "auto":
        batching = "vmap"
    check_deterministic(skeleton)
    qual = [n for n, _ in skeleton.named_parameters()]
    with torch.no_grad():
        out = skeleton(torch.zeros(2, *input_shape))
    got = 1 if out.dim() == 1 else int(torch.tensor(out.shape[1:]).prod())
    if out.shape[0] != 2 or got != outputs:
        want = f"{outputs} classes" if outputs > 1 else "±1 labels (1 output)"
        raise UserInputError(
            f"model: the module gives outputs of shape {tuple(out.shape[1:])} per sample but "
            f"the data has {want}"
        )

    def fn(params: Params, x: Tensor) -> Tensor:
        f = functional_call(
            skeleton, dict(zip(qual, params, strict=True)), (x.reshape(-1, *input_shape),)
        )
        return f.reshape(f.shape[0]) if outputs == 1 else f

    def init_one(seed: int, init_scale: float, dtype: torch.dtype) -> Params:
        with _INIT_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
            module = build()
        return tuple(
            p.detach().to(torch.float64).mul(init_scale).to(dtype) for p in module.parameters()
        )

    names = [n.replace(".", "_") for n in qual]
    n_params = sum(p.numel() for p in skeleton.parameters())
    return GenericBackend(
        fn, names, init_one, loss_kind, n_params, outputs=outputs, loop=batching == "loop"
    )
