"""fluojax.draws: each draw equals its jax.random namesake bit for bit (the reference), in both
dtypes, called directly, inside jit and under vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fluojax import draws

SHAPE = (4, 1, 6, 3)  # a 4-D shape: a flat draw reshaped must keep every element's place
LAM = np.geomspace(0.05, 300.0, int(np.prod(SHAPE))).reshape(SHAPE)  # both Poisson samplers (lam < 10, >= 10)

# (ours, the jax.random reference), called with (key, dtype)
PAIRS = {
    "normal": (lambda k, d: draws.normal(k, SHAPE, d), lambda k, d: jax.random.normal(k, SHAPE, d)),
    "uniform": (lambda k, d: draws.uniform(k, SHAPE, d), lambda k, d: jax.random.uniform(k, SHAPE, d)),
    "uniform-bounds": (
        lambda k, d: draws.uniform(k, SHAPE, d, -2.5, 7.0),
        lambda k, d: jax.random.uniform(k, SHAPE, d, -2.5, 7.0),
    ),
    "exponential": (lambda k, d: draws.exponential(k, SHAPE, d), lambda k, d: jax.random.exponential(k, SHAPE, d)),
    "truncated-normal": (
        lambda k, d: draws.truncated_normal(k, -2.0, 2.0, SHAPE, d),
        lambda k, d: jax.random.truncated_normal(k, -2.0, 2.0, SHAPE, d),
    ),
    "bernoulli": (lambda k, d: draws.bernoulli(k, 0.3, SHAPE), lambda k, d: jax.random.bernoulli(k, 0.3, SHAPE)),
    "poisson": (
        lambda k, d: draws.poisson(k, jnp.asarray(LAM, d)),
        lambda k, d: jax.random.poisson(k, jnp.asarray(LAM, d)),
    ),
}


@pytest.mark.parametrize("name", list(PAIRS))
def test_draws_equal_jax_random_bit_for_bit(name, dtype):
    ours, reference = PAIRS[name]
    key = jax.random.key(7)
    a, b = ours(key, dtype), reference(key, dtype)
    assert a.shape == b.shape == SHAPE and a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", ["uniform-bounds", "poisson"])
def test_draws_inside_jit_equal_jax_random_inside_jit(name, dtype):
    # XLA may fuse the scaling of a draw differently inside a program; the values must not change
    ours, reference = PAIRS[name]
    key = jax.random.key(8)
    a = jax.jit(lambda k: ours(k, dtype))(key)
    b = jax.jit(lambda k: reference(k, dtype))(key)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_draws_of_vmapped_keys_equal_jax_random(dtype):
    keys = jax.random.split(jax.random.key(9), 5)
    a = jax.vmap(lambda k: draws.normal(k, (3, 2), dtype))(keys)
    b = jax.vmap(lambda k: jax.random.normal(k, (3, 2), dtype))(keys)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_an_int_shape_is_a_1d_draw():
    key = jax.random.key(10)
    np.testing.assert_array_equal(np.asarray(draws.uniform(key, 7)), np.asarray(jax.random.uniform(key, (7,))))
