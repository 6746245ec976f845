"""The four objectives against plain NumPy loops written from the paper's formulas."""

from __future__ import annotations

import numpy as np
import pytest

from sgcl_jax import losses
from tests.oracles import np_opt1, np_opt2, np_sg, np_sg_opt, phi

B, K, D, TAU = 5, 4, 8, 0.5


@pytest.fixture()
def vectors():
    rng = np.random.default_rng(42)
    return rng.standard_normal((B, D)), rng.standard_normal((B, K, D))


@pytest.mark.parametrize("name,oracle", [("sg", np_sg), ("opt1", np_opt1), ("opt2", np_opt2)])
def test_single_view_objectives(vectors, name, oracle):
    c, h_all = vectors
    h = h_all[:, 1]
    got = float(getattr(losses, name)(c.astype(np.float32), h.astype(np.float32), TAU))
    np.testing.assert_allclose(got, oracle(c, h, TAU), rtol=1e-5, atol=1e-5)


def test_sg_opt(vectors):
    c, h_all = vectors
    got = float(losses.sg_opt(c.astype(np.float32), h_all.astype(np.float32), TAU))
    np.testing.assert_allclose(got, np_sg_opt(c, h_all, TAU), rtol=1e-5, atol=1e-5)


def test_sg_opt_ignores_own_other_layer_views(vectors):
    """An oracle that puts sentence i's other-layer views in its denominator must disagree with ours."""
    c, h_all = vectors

    def with_own_views(c, h_all):
        out = []
        for i in range(B):
            den = sum(phi(c[i], h_all[m, n], TAU) for m in range(B) for n in range(K))
            out += [-np.log(phi(c[i], h_all[i, k], TAU) / den) for k in range(K)]
        return np.mean(out)

    got = float(losses.sg_opt(c.astype(np.float32), h_all.astype(np.float32), TAU))
    assert abs(got - with_own_views(c, h_all)) > 1e-2


def test_low_temperature_matches_oracle_and_is_finite():
    """At tau = 0.01 the logits reach +-100: fp32 math stays finite and matches float64, even for bf16 inputs."""
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    c = np.asarray(jnp.asarray(rng.standard_normal((B, D)), jnp.bfloat16).astype(jnp.float32), np.float64)
    h_all = np.asarray(jnp.asarray(rng.standard_normal((B, K, D)), jnp.bfloat16).astype(jnp.float32), np.float64)
    got = float(losses.sg_opt(jnp.asarray(c, jnp.bfloat16), jnp.asarray(h_all, jnp.bfloat16), 0.01))
    assert np.isfinite(got)
    np.testing.assert_allclose(got, np_sg_opt(c, h_all, tau=0.01), rtol=1e-4)
