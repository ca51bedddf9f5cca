"""Random draws with ``jax.random``'s values, compiled as one flat vector and reshaped.

JAX's default generator (threefry, partitionable) is counter-based: element ``i`` of a draw gets
the same random bits whatever the shape it belongs to, so drawing ``prod(shape)`` numbers and
reshaping them reproduces ``jax.random.normal(key, shape)`` bit for bit. XLA on a CPU compiles
the flat draw several times faster than a multi-dimensional one (about 0.15 s against 0.65 s
for a 4-D normal; docs/benchmarks.md, "Compiling random draws"), and every simulator compiles
its draws once per shape and process. The multi-dimensional draws of fluojax's simulators,
camera models and weight initializers go through this module (a 1-D draw gains nothing); the
values are those of the ``jax.random`` function named alike (tested bit for bit in
``tests/test_draws.py``).

Each function takes the arguments of its ``jax.random`` namesake; ``shape`` is a tuple of ints.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["bernoulli", "exponential", "normal", "poisson", "truncated_normal", "uniform"]


def _flat(shape) -> tuple[tuple[int, ...], tuple[int]]:
    shape = tuple(int(n) for n in shape)
    return shape, (math.prod(shape),)


def normal(key: jax.Array, shape=(), dtype: Any = float) -> jax.Array:
    """Standard normal draws of ``shape``: ``jax.random.normal(key, shape, dtype)``."""
    shape, flat = _flat(shape)
    return jax.random.normal(key, flat, dtype).reshape(shape)


def uniform(key: jax.Array, shape=(), dtype: Any = float, minval=0.0, maxval=1.0) -> jax.Array:
    """Uniform draws on ``[minval, maxval)`` (scalars) of ``shape``: ``jax.random.uniform(key,
    shape, dtype, minval, maxval)``."""
    shape, flat = _flat(shape)
    return jax.random.uniform(key, flat, dtype, minval, maxval).reshape(shape)


def exponential(key: jax.Array, shape=(), dtype: Any = float) -> jax.Array:
    """Unit-mean exponential draws of ``shape``: ``jax.random.exponential(key, shape, dtype)``."""
    shape, flat = _flat(shape)
    return jax.random.exponential(key, flat, dtype).reshape(shape)


def bernoulli(key: jax.Array, p, shape) -> jax.Array:
    """Booleans of ``shape``, True with probability ``p`` (a scalar): ``jax.random.bernoulli(key, p, shape)``."""
    shape, flat = _flat(shape)
    return jax.random.bernoulli(key, p, flat).reshape(shape)


def truncated_normal(key: jax.Array, lower, upper, shape=(), dtype: Any = float) -> jax.Array:
    """Standard normal draws cut to ``[lower, upper]`` (scalars): ``jax.random.truncated_normal``."""
    shape, flat = _flat(shape)
    return jax.random.truncated_normal(key, lower, upper, flat, dtype).reshape(shape)


def poisson(key: jax.Array, lam, dtype: Any = int) -> jax.Array:
    """Poisson counts of means ``lam`` (an array; its shape is the draw's):
    ``jax.random.poisson(key, lam, dtype=dtype)``."""
    lam = jnp.asarray(lam)
    return jax.random.poisson(key, lam.ravel(), dtype=dtype).reshape(lam.shape)
