"""The built-in demo: a deterministic simulated stack with three regions of different D, fitted in 2D.

Three independent 2D TIRF stacks (D = 0.3, 1 and 3 um^2/s; one simulator call vmapped over D)
are placed side by side, so each region is a homogeneous membrane patch; the whole image is then
analysed exactly as ``fluojax fcs fit`` would (binning 1, no bleach correction needed).

Each region's median fitted D comes with its standard error (:func:`median_standard_error`), so
that a deviation from the true D can be told from a statistical draw: within about two standard
errors it is one.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from fluojax.fcs import models, pipeline, simulate

__all__ = ["DEMO_REGIONS", "median_standard_error", "region_summaries", "run_demo"]

DEMO_REGIONS = (("slow", 0.3), ("medium", 1.0), ("fast", 3.0))
_OPTICS = models.Optics(camera_pixel_um=24.0, magnification=100.0, na=1.45, wavelength_nm=583.0, sigma0=0.8)
_FRAME_TIME_S = 1.06e-3
_REGION_PX = 12
_MARGIN_PX = 8
_DENSITY_PER_UM2 = 3.0
_BRIGHTNESS = 8.0


def median_standard_error(values: Float[np.ndarray, " *dims"]) -> float:
    """Standard error of the median of ``values``, from their spread (NaNs left out).

    For n independent draws from a normal distribution of standard deviation sd, the sample
    median is asymptotically normal with standard deviation sqrt(pi / 2) sd / sqrt(n)
    = 1.2533 sd / sqrt(n) (Kenney and Keeping 1962); sd is estimated by the sample standard
    deviation (n - 1 in the denominator). Pixels of one demo region are treated as independent
    draws of the same D.

    Arguments:
        values: array of any shape (e.g. a region of the D map, um^2/s); NaN = not fitted.

    Returns:
        float, in the unit of ``values``; NaN with fewer than two finite values.
    """
    finite = np.asarray(values, np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size < 2:
        return math.nan
    return float(math.sqrt(math.pi / 2) * np.std(finite, ddof=1) / math.sqrt(finite.size))


def region_summaries(
    d_map: Float[np.ndarray, " *dims"], regions=DEMO_REGIONS, region_px: int = _REGION_PX
) -> list[dict]:
    """Median fitted D of each region (side by side along x), its standard error and the truth.

    Arguments:
        d_map: (Y, X) fitted D in um^2/s, NaN where no pixel was fitted; region i holds the
            columns ``i * region_px`` to ``(i + 1) * region_px``.
        regions: sequence of (name, true D in um^2/s).
        region_px: region width in pixels.

    Returns:
        one dict per region: ``name``, ``true_d_um2_s``, ``median_d_um2_s``,
        ``relative_error`` (median / truth - 1), ``median_standard_error_um2_s``
        (:func:`median_standard_error`), ``deviation_in_standard_errors``
        ((median - truth) / standard error) and ``fitted_pixels``.
    """
    summaries = []
    for i, (name, d) in enumerate(regions):
        fitted = np.asarray(d_map)[:, i * region_px : (i + 1) * region_px]
        median = float(np.nanmedian(fitted)) if np.isfinite(fitted).any() else math.nan
        error = median_standard_error(fitted)
        summaries.append(
            {
                "name": name,
                "true_d_um2_s": float(d),
                "median_d_um2_s": median,
                "relative_error": median / d - 1.0,
                "median_standard_error_um2_s": error,
                "deviation_in_standard_errors": (median - d) / error,
                "fitted_pixels": int(np.isfinite(fitted).sum()),
            }
        )
    return summaries


def run_demo(frames: int = 20000, seed: int = 0, progress: bool | None = None) -> dict:
    """Simulate and analyse the demo stack.

    Arguments:
        frames: int, frames to simulate (>= 2,304 for the default correlator).
        seed: int, PRNG seed (the result is deterministic for it).
        progress: show progress bars (None: on a terminal).

    Returns:
        dict with ``maps`` (``pipeline.FCSMaps``), ``settings``, ``regions`` (true and median
        fitted D per region with its standard error: :func:`region_summaries`) and ``simulate_s``.
    """
    geometry = simulate.StackGeometry(
        frames=frames,
        size_px=_REGION_PX,
        frame_time_s=_FRAME_TIME_S,
        n_particles=simulate.particles_for_density(_DENSITY_PER_UM2, _REGION_PX, _OPTICS, _MARGIN_PX),
        margin_px=_MARGIN_PX,
    )
    d_true = jnp.array([d for _, d in DEMO_REGIONS], jnp.float32)
    keys = jax.random.split(jax.random.key(seed), len(DEMO_REGIONS))
    t0 = time.perf_counter()
    sample = simulate.DiffusionSample(d_true, jnp.full_like(d_true, _BRIGHTNESS))
    stacks = jax.vmap(lambda k, s: simulate.simulate_stack(k, s, _OPTICS, geometry))(keys, sample)
    stack = np.concatenate(list(np.asarray(stacks)), axis=2)  # regions side by side along x
    simulate_s = time.perf_counter() - t0

    settings = pipeline.AnalysisSettings(frame_time_s=_FRAME_TIME_S, optics=_OPTICS, model="2d", bleach_order=0)
    maps = pipeline.analyse_stack(stack, settings, progress=progress)
    regions = region_summaries(maps.d_um2_s)
    return {"maps": maps, "settings": settings, "regions": regions, "simulate_s": simulate_s}
