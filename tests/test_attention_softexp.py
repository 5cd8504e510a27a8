"""The software exponential against float64 numpy, and the blockwise tiles' chains against one batched tile."""

import numpy as np
import pytest

import jax.numpy as jnp

from yarn_jax.attention import blockwise, softexp


def test_exp2_relative_error_over_the_softmax_range():
    x = np.linspace(-125.0, 0.5, 2_000_001).astype(np.float32)
    got = np.asarray(softexp.exp2(jnp.asarray(x)), np.float64)
    ref = np.exp2(x.astype(np.float64))
    assert np.max(np.abs(got - ref) / ref) < 2e-7  # measured 1.77e-7 (XLA:CPU's own exp2: 4.1e-6)


def test_exp2_is_exact_at_integers_and_zero_below_the_normals():
    n = np.arange(-125, 1).astype(np.float32)
    got = np.asarray(softexp.exp2(jnp.asarray(n)), np.float64)
    np.testing.assert_allclose(got, np.exp2(n.astype(np.float64)), rtol=2e-7)  # p(0) = c0 ≈ 1 - 1e-7
    assert float(softexp.exp2(jnp.float32(-1e30))) == 0.0  # a masked score minus a real maximum
    assert float(softexp.exp2(jnp.float32(-130.0))) == 0.0


def test_exp_in_natural_units():
    x = np.linspace(-20.0, 0.0, 200_001).astype(np.float32)
    got = np.asarray(softexp.exp(jnp.asarray(x)), np.float64)
    ref = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - ref) / ref) < 1.5e-6  # x·log2 e rounds: ~|x|·6e-8 relative


@pytest.mark.parametrize("kv_heads, chains", [(1, 1), (3, 3), (8, 8), (12, 8), (32, 8)])
def test_head_groups_cover_every_head_once(kv_heads, chains):
    groups = blockwise._head_groups(kv_heads)
    assert len(groups) == chains
    assert [h for g in groups for h in range(g.start, g.stop)] == list(range(kv_heads))
