"""Random draws with ``jax.random``'s values, compiled as one flat vector and reshaped.

JAX's default generator (threefry, partitionable) is counter-based: element ``i`` of a draw gets
the same random bits whatever the shape it belongs to, so drawing ``prod(shape)`` numbers and
reshaping them reproduces ``jax.random.normal(key, shape)`` bit for bit. XLA on a CPU compiles
the flat draw several times faster than a multi-dimensional one (a 4-D normal: 0.19 s against
0.95 s on a 2-core CPU; docs/benchmarks.md, "Compiling random draws"), and every simulator
compiles its draws once per shape and process. The multi-dimensional normal, uniform,
exponential, truncated-normal and Poisson draws of fluojax's simulators, camera models and
weight initializers go through this module (a 1-D draw gains nothing; ``jax.random.gamma``
already draws element by element, and ``choice`` is left to JAX); the values are those of the
``jax.random`` function named alike (tested bit for bit in ``tests/test_draws.py``).

Each function takes the arguments of its ``jax.random`` namesake, with two limits: ``shape`` is
an int or a tuple of ints (static), and the bounds of ``uniform`` and ``truncated_normal`` and the
probability of ``bernoulli`` are scalars (``jax.random`` would broadcast arrays against ``shape``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["bernoulli", "exponential", "normal", "poisson", "truncated_normal", "uniform"]


def _flat(shape) -> tuple[tuple[int, ...], tuple[int]]:
    shape = (int(shape),) if isinstance(shape, int) else tuple(int(n) for n in shape)
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
