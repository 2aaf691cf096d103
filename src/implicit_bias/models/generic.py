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

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.func import grad, grad_and_value, jacrev, jvp, vjp, vmap

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
    ) -> None:
        self.n_outputs = outputs
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
    def outputs(self, params: Params, X: Tensor, x_dim: int | None) -> Tensor:
        """f of every run, ``(R, n)``."""
        return vmap(self.fn, in_dims=(0, x_dim))(params, X)

    def forward_loss(
        self, params: Params, X: Tensor, y: Tensor, x_dim: int | None
    ) -> tuple[Tensor, Tensor, Params]:
        """Loss ``(R,)``, outputs ``(R, n)`` and, as the pass that :meth:`grad`
        completes, the gradients (one ``grad_and_value`` costs what a forward and
        a backward cost; the loss is needed at every step anyway)."""
        gv = grad_and_value(self._loss_and_output, has_aux=True)
        grads, (loss, f) = vmap(gv, in_dims=(0, x_dim, x_dim))(params, X, y)
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

        batched = vmap(gn_one if gauss_newton else hvp_one, in_dims=(0, 0, x_dim, x_dim))
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

        return vmap(one, in_dims=(0, x_dim))(params, X)
