"""Batched L2-regularised logistic regression (scikit-learn's C convention) solved by Newton's method with
preconditioned conjugate gradients: every fit of a SentEval task at once, the fits the columns of one matrix.
Written out rather than an optax solver vmapped over fits: that nests a line-search loop per fit and runs many
small products instead of a few large ones."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


@functools.lru_cache(maxsize=16)
def logreg_program(nclasses: int, max_iter: int, tol: float, max_cg: int = 50) -> Callable[..., Any]:
    """A jitted (X, y, weights (n, F), C (F,)) -> (W (d+1, k, F), data products per fit, Newton iterations per fit):
    every fit at once.

    Newton's method with preconditioned conjugate gradients on scikit-learn's objective divided by C * n (the
    same minimiser): mean cross-entropy + ||W||^2 / (2 C n), the intercept unpenalised. The fits are the columns
    of one matrix, so each product with the data is one matrix multiplication for all of them (X @ W is (n, F)).
    The preconditioner is each fit's Hessian with every probability at 1/2: X^T X / (4 n) + its penalty, factored
    once. A fit stops when its Newton decrement g.H^-1.g (twice its remaining suboptimality) is below `tol`, or
    when no step decreases its objective (the float32 floor). Written out rather than an optax solver vmapped
    over fits: that nests a line-search loop per fit and runs many small products instead of a few large ones.
    """
    k = 1 if nclasses == 2 else nclasses  # binomial: one logit z, p = sigmoid(z); else softmax over k
    steps = jnp.asarray([1.0, 0.5, 0.25, 0.125, 0.0625, 1 / 32, 1 / 64])

    def fit(x, y, weights, c):
        n_fit = jnp.sum(weights, axis=0)  # (F,)
        xa = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)  # (n, D)
        dim, fits = xa.shape[1], weights.shape[1]
        penalty = jnp.where(jnp.arange(dim)[:, None] < dim - 1, 1.0 / (c * n_fit), 0.0)  # (D, F)
        lam = penalty[:, None, :]  # (D, 1, F)
        # Softmax's logits can all shift together, and the intercepts are not penalised: that direction has no
        # curvature. A tiny damping of the intercepts in the Newton system keeps it solvable; the gradient, and
        # so the solution, are the objective's own.
        damping = lam + jnp.where(jnp.arange(dim)[:, None, None] == dim - 1, 1e-6, 0.0)
        onehot = jax.nn.one_hot(y, nclasses)
        target = onehot[:, 1:] if k == 1 else onehot  # (n, k)
        scale = weights / n_fit  # (n, F): each fit's rows, averaged
        gram = xa.T @ xa / (4.0 * x.shape[0])
        # Inverted once (a tiny ridge keeps the unpenalised intercept's direction invertible), then applied as
        # one batched product per conjugate-gradient step: triangular solves are slow on CPUs.
        inverse = jnp.linalg.inv(gram[None] + jax.vmap(jnp.diag)(penalty.T + 1e-6))  # (F, D, D)

        def precondition(r):  # (D, k, F) -> (D, k, F)
            return jnp.einsum("fde,ekf->dkf", inverse, r)

        def logits(w):  # (D, k, F) -> (n, k, F)
            return jnp.einsum("nd,dkf->nkf", xa, w)

        def probs(z):
            return jax.nn.sigmoid(z) if k == 1 else jax.nn.softmax(z, axis=1)

        def ce(z):  # (n, k, F) -> (n, F)
            if k == 1:
                return jax.nn.softplus(z[:, 0]) - target[:, 0, None] * z[:, 0]
            return jax.nn.logsumexp(z, axis=1) - jnp.einsum("nk,nkf->nf", target, z)

        def change(z, w, dz, dw, t):
            # The objective's change for a step -t, summed row by row and with the penalty written in w.dw:
            # float32 then resolves changes far below the objective's own rounding (about 3e-8 of it).
            data = jnp.sum(scale * (ce(z - t * dz) - ce(z)), axis=0)
            return data + jnp.sum(lam * (0.5 * t * t * dw * dw - t * w * dw), axis=(0, 1))

        def gradient(z, w):
            residual = (probs(z) - target[:, :, None]) * scale[:, None, :]
            return jnp.einsum("nd,nkf->dkf", xa, residual) + lam * w

        def hvp(p, v):  # each fit's Hessian times its column of v
            u = logits(v)
            r = p * (1 - p) * u if k == 1 else p * u - p * jnp.sum(p * u, axis=1, keepdims=True)
            return jnp.einsum("nd,nkf->dkf", xa, r * scale[:, None, :]) + damping * v

        def dot(a, b):
            return jnp.sum(a * b, axis=(0, 1))

        def newton(state):
            w, z, iters, products, done = state
            g = gradient(z, w)
            p = probs(z)
            active = ~done

            def cg(cg_state):  # preconditioned conjugate gradients for H d = g, all fits at once
                d, r, q, rz, it, count = cg_state
                hq = hvp(p, q)
                alpha = rz / jnp.maximum(dot(q, hq), 1e-30)
                going = active & (dot(r, r) > 1e-8 * dot(g, g))
                d = jnp.where(going, d + alpha * q, d)
                r = jnp.where(going, r - alpha * hq, r)
                zr = precondition(r)
                rz_new = dot(r, zr)
                q = jnp.where(going, zr + rz_new / jnp.maximum(rz, 1e-30) * q, q)
                count = count + 2 * going.astype(jnp.int32)  # X v and X^T r
                return d, r, q, jnp.where(going, rz_new, rz), it + 1, count

            zg = precondition(g)
            start = (jnp.zeros_like(w), g, zg, dot(g, zg), 0, products)
            direction, r, *_, products = jax.lax.while_loop(
                lambda s: (s[4] < max_cg) & jnp.any(active & (dot(s[1], s[1]) > 1e-8 * dot(g, g))), cg, start)
            decrement = dot(g, direction)  # ~ g.H^-1.g
            dz = logits(direction)
            tried = jnp.stack([change(z, w, dz, direction, t) for t in steps])  # (steps, F)
            better = jnp.min(tried, axis=0) < 0
            t = jnp.where(active & better, steps[jnp.argmin(tried, axis=0)], 0.0)
            products = products + 2 * active.astype(jnp.int32)  # the gradient and X @ direction
            iters = iters + active.astype(jnp.int32)
            done = done | ~better | (decrement < tol) | (iters >= max_iter)
            return w - t * direction, z - t * dz, iters, products, done

        w0 = jnp.zeros((dim, k, fits), x.dtype)
        zero = jnp.zeros((fits,), jnp.int32)
        state = (w0, logits(w0), zero, zero, jnp.zeros((fits,), bool))
        w, _, iters, products, _ = jax.lax.while_loop(lambda s: ~jnp.all(s[4]), newton, state)
        return w, products, iters

    return jax.jit(fit)
