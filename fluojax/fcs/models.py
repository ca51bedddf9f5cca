"""Imaging FCS forward models: lag times and physical parameters -> expected autocorrelation.

Two geometries, as in Tang et al. 2024 (Methods eqs. 2-5; after Bag et al. 2012 and Wohland et al. 2010):

* **2D ITIR-FCS** (TIRF): a square camera pixel of side ``a`` observed through a Gaussian
  PSF of 1/e^2 radius ``w``; closed form (eqs. 2-3).
* **3D SPIM-FCS** (light sheet): the same pixel plus a Gaussian light sheet of 1/e^2 radius
  ``w_z`` and a PSF that widens out of focus, ``w(z) = w + |z| tan(alpha)``; a double integral
  over the depths z, z' of the two detection events (eqs. 4-5), which has no closed form.

Everything here is a pure JAX function of pytrees, so it can be jitted, vmapped over pixels and
differentiated with respect to any parameter (D, N, G_inf, or the optics themselves).

Conventions. Lengths in micrometres (um), times in seconds (s), D in um^2/s. Optics follow the
Imaging FCS plugin: object-space pixel ``a = camera_pixel_um / magnification * binning``,
``w = sigma0 * lambda / NA`` and ``w_z = sigmaz * lambda / NA`` (both 1/e^2 radii),
``tan(alpha) = NA / sqrt(n^2 - NA^2)``.

Amplitude. ``N`` is the number of particles in the pixel's observation area ``a^2`` (2D) or
volume ``a^2 * sqrt(pi) * w_z`` (3D), so that both models read ``G(tau) = S(D tau) / N + G_inf``
with a dimensionless shape ``S``. The plugin normalises N by an effective area instead
(``N_plugin = N / S(0)`` in 2D); D is the same under either convention.

The 3D shape depends on D and tau only through the product ``D tau``. We evaluate it with a
piecewise Gauss-Legendre rule that follows the width of the diffusion kernel (accurate to
better than 1e-6 relative against adaptive quadrature; see ``docs/fcs.md``), and for fitting we
tabulate it once per optics on a log grid of ``D tau`` with exact slopes (cubic Hermite), which
makes a 3D fit cost about the same as a 2D fit.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf
from jax.typing import ArrayLike
from jaxtyping import Array, Float

__all__ = [
    "GEOMETRIES",
    "ITIR_2D",
    "SPIM_3D",
    "ACFParams",
    "Geometry",
    "Itir2D",
    "Optics",
    "Spim3D",
    "SpimShapeTable",
    "acf_2d_itir",
    "acf_3d_spim",
    "acf_3d_spim_tabulated",
    "as_geometry",
    "check_optics",
    "pixel_overlap_factor",
    "pixel_side_um",
    "psf_radius_um",
    "sheet_radius_um",
    "spim_shape",
    "spim_shape_interpolated",
    "spim_shape_plugin_rectangle",
    "spim_shape_table",
    "tan_half_angle",
]

_SQRT_PI = float(np.sqrt(np.pi))


class Optics(NamedTuple):
    """Microscope geometry, as the Imaging FCS plugin takes it.

    Attributes:
        camera_pixel_um: float, camera pixel pitch in um (e.g. 24).
        magnification: float, total magnification (e.g. 100).
        na: float, numerical aperture of the detection objective.
        wavelength_nm: float, emission wavelength in nm.
        sigma0: float, PSF factor; the PSF 1/e^2 radius is ``sigma0 * lambda / NA``.
        sigmaz: float or None, light-sheet factor; sheet 1/e^2 radius ``sigmaz * lambda / NA``.
            None (the default): no light sheet, as in 2D ITIR-FCS/TIRF (the 3D SPIM geometry
            :class:`Spim3D` needs a value).
        refractive_index: float, refractive index of the sample medium (3D defocus only; the 2D
            model does not use it).
        binning: int, n for n x n pixel binning (1 = none).
        immersion_index: float, refractive index of the objective's immersion medium (default
            1.518, oil); only bounds the NA (:func:`check_optics`), no model uses it.
    """

    camera_pixel_um: float = 24.0
    magnification: float = 100.0
    na: float = 1.45
    wavelength_nm: float = 583.0
    sigma0: float | jax.Array = 0.8
    sigmaz: float | None = None
    refractive_index: float = 1.333
    binning: int = 1
    immersion_index: float = 1.518


def check_optics(optics: Optics, geometry: Geometry) -> None:
    """Refuse optics that cannot exist, with a one-line ``fluojax.io.InputError``.

    Every length and factor must be positive and finite and the binning a positive integer. The
    numerical aperture ``NA = n sin(theta)`` cannot exceed the index ``n`` of the immersion medium
    (``immersion_index``); the geometry adds its own conditions (:meth:`Geometry.check`: in 3D a
    light sheet and ``NA`` below the sample's ``refractive_index``).

    Arguments:
        optics: ``Optics`` with concrete (host) values.
        geometry: ``Geometry`` of the measurement (:class:`Itir2D` or :class:`Spim3D`).

    Raises:
        fluojax.io.InputError: the first impossible value, named with its unit.
    """
    from fluojax.io import InputError

    names = {
        "camera_pixel_um": "camera pixel size {:g} um",
        "magnification": "magnification {:g}",
        "na": "numerical aperture {:g}",
        "wavelength_nm": "wavelength {:g} nm",
        "sigma0": "PSF factor sigma0 {:g}",
        "sigmaz": "light-sheet factor sigmaz {:g}",
        "refractive_index": "sample refractive index {:g}",
        "immersion_index": "immersion refractive index {:g}",
        "binning": "binning {:g} pixels",
    }
    for field, name in names.items():
        raw = getattr(optics, field)
        if raw is None and field == "sigmaz":
            continue  # no light sheet (2D)
        value = float(raw)
        if not (np.isfinite(value) and value > 0):
            raise InputError(f"{name.format(value)}: must be positive and finite")
    if float(optics.binning) != int(optics.binning):
        raise InputError(f"binning {optics.binning} pixels: must be a whole number")
    geometry.check(optics)
    if float(optics.na) > float(optics.immersion_index):
        raise InputError(
            f"NA {float(optics.na):g}: exceeds the immersion medium's refractive index "
            f"{float(optics.immersion_index):g} (NA = n sin(theta) <= n)"
        )


class Geometry(abc.ABC):
    """An observation geometry of Imaging FCS: what the fitter needs to know of its ACF model.

    Both geometries read ``G(tau) = S(D tau) / N + G_inf`` (Wohland et al. 2010; Bag
    et al. 2012) with a shape ``S`` fixed by the optics. A geometry supplies the per-optics
    constants of its fitting model (:meth:`model_args`: the optics themselves in 2D, the
    tabulated 3D shape in 3D), the model ACF on those constants (:meth:`acf`), the shape as a
    NumPy function (:meth:`shape_function`, for start values and the networks' physics check)
    and its conditions on the optics (:meth:`check`). Subclasses are frozen dataclasses
    (hashable: a geometry is a static argument, never traced); :data:`GEOMETRIES` names them
    for the command line's ``--model``.
    """

    name: ClassVar[str]
    """Registry name (``"2d"``, ``"3d"``), also written to summary.json as ``settings.model``."""
    light_sheet: ClassVar[bool]
    """Whether the geometry has a light sheet (``Optics.sigmaz``) and defocus along z (a 3D volume
    for the simulator); ``False``: a 2D observation area."""

    @abc.abstractmethod
    def check(self, optics: Optics) -> None:
        """Raise ``fluojax.io.InputError`` when the optics do not fit this geometry."""

    @abc.abstractmethod
    def model_args(self, optics: Optics) -> Any:
        """The per-optics constants of :meth:`acf` (a pytree; computed once per fit)."""

    @abc.abstractmethod
    def acf(self, lag_s: Float[Array, " c"], params: ACFParams, model_args: Any) -> Float[Array, " c"]:
        """The model ``G(tau)`` at lag times ``lag_s`` (s) on the constants of :meth:`model_args`."""

    @abc.abstractmethod
    def shape_function(self, optics: Optics) -> Callable[[np.ndarray], np.ndarray]:
        """``S(D tau)`` as a vectorised NumPy function of D tau (um^2), the normalised ACF shape."""


@dataclasses.dataclass(frozen=True)
class Itir2D(Geometry):
    """2D ITIR-FCS (TIRF): pixel and Gaussian PSF, closed form (:func:`acf_2d_itir`); no light sheet."""

    name: ClassVar[str] = "2d"
    light_sheet: ClassVar[bool] = False

    def check(self, optics: Optics) -> None:
        """Nothing beyond :func:`check_optics`: the 2D model uses neither sigmaz nor the sample index."""

    def model_args(self, optics: Optics) -> Optics:
        return optics

    def acf(self, lag_s, params: ACFParams, model_args: Any):
        return acf_2d_itir(lag_s, params, model_args)

    def shape_function(self, optics: Optics) -> Callable[[np.ndarray], np.ndarray]:
        a, w = float(pixel_side_um(optics)), float(psf_radius_um(optics))

        def shape(dtau):
            return np.asarray(_overlap_squared(jnp.asarray(a / np.sqrt(w**2 + 4 * dtau), jnp.float32)))

        return shape


@dataclasses.dataclass(frozen=True)
class Spim3D(Geometry):
    """3D SPIM-FCS: pixel, light sheet and defocus, tabulated quadrature (:func:`acf_3d_spim_tabulated`)."""

    name: ClassVar[str] = "3d"
    light_sheet: ClassVar[bool] = True

    def check(self, optics: Optics) -> None:
        """A light sheet (``sigmaz`` set) and ``NA`` below the sample index: the detection cone
        ``tan(alpha) = NA / sqrt(n^2 - NA^2)`` (Tang et al. 2024, eq. 5) needs ``NA < n``."""
        from fluojax.io import InputError

        if optics.sigmaz is None:
            raise InputError("light-sheet factor sigmaz: none given, but the 3D SPIM geometry needs a light sheet")
        na, n_sample = float(optics.na), float(optics.refractive_index)
        if na >= n_sample:
            raise InputError(
                f"NA {na:g}: must be below the sample refractive index {n_sample:g} "
                "(3D: the detection cone needs NA < n)"
            )

    def model_args(self, optics: Optics) -> SpimShapeTable:
        return jax.jit(spim_shape_table)(optics)

    def acf(self, lag_s, params: ACFParams, model_args: Any):
        return acf_3d_spim_tabulated(lag_s, params, model_args)

    def shape_function(self, optics: Optics) -> Callable[[np.ndarray], np.ndarray]:
        table = self.model_args(optics)

        def shape(dtau):
            return np.asarray(spim_shape_interpolated(jnp.asarray(dtau), table))

        return shape


ITIR_2D = Itir2D()
SPIM_3D = Spim3D()
GEOMETRIES: dict[str, Geometry] = {g.name: g for g in (ITIR_2D, SPIM_3D)}
"""The geometries by name, as the command line's ``--model`` gives them."""


def as_geometry(geometry: Geometry | str) -> Geometry:
    """A ``Geometry`` as it is, or the one a name gives in :data:`GEOMETRIES`.

    Raises:
        fluojax.io.InputError: an unknown name.
    """
    if isinstance(geometry, Geometry):
        return geometry
    if geometry in GEOMETRIES:
        return GEOMETRIES[geometry]
    from fluojax.io import InputError

    raise InputError(f"unknown model geometry {geometry!r}: known are {', '.join(GEOMETRIES)}")


class ACFParams(NamedTuple):
    """Parameters of a one-component free-diffusion ACF.

    Attributes:
        n_particles: float, mean number of particles in the observation area/volume (N).
        d_um2_s: float, diffusion coefficient D in um^2/s.
        g_inf: float, long-lag offset G_inf (dimensionless).
    """

    n_particles: jax.Array | float
    d_um2_s: jax.Array | float
    g_inf: jax.Array | float = 0.0


def pixel_side_um(optics: Optics) -> jax.Array | float:
    """Object-space side ``a`` of a (binned) pixel in um: camera pixel / magnification * binning."""
    return optics.camera_pixel_um / optics.magnification * optics.binning


def psf_radius_um(optics: Optics) -> jax.Array | float:
    """Lateral PSF 1/e^2 radius ``w = sigma0 * lambda / NA`` in um."""
    return optics.sigma0 * optics.wavelength_nm * 1e-3 / optics.na


def sheet_radius_um(optics: Optics) -> jax.Array | float:
    """Light-sheet 1/e^2 radius ``w_z = sigmaz * lambda / NA`` in um (optics with a light sheet only)."""
    if optics.sigmaz is None:
        from fluojax.io import InputError

        raise InputError("light-sheet factor sigmaz: none given (2D optics have no light sheet)")
    return optics.sigmaz * optics.wavelength_nm * 1e-3 / optics.na


def tan_half_angle(optics: Optics) -> jax.Array | float:
    """``tan(alpha)`` of the detection cone, ``NA / sqrt(n^2 - NA^2)`` (Tang et al. 2024, eq. 5)."""
    return optics.na / jnp.sqrt(optics.refractive_index**2 - optics.na**2)


def pixel_overlap_factor(p: Float[ArrayLike, "*s"]) -> Float[Array, "*s"]:
    """Per-axis overlap of a square pixel with itself after Gaussian blurring.

    ``b(p) = erf(p) + (exp(-p^2) - 1) / (sqrt(pi) p)``, with ``p = a / s`` the pixel side over the
    1/e^2 radius ``s`` of the combined PSF-and-diffusion kernel (Tang et al. 2024, eq. 2, the bracket).
    ``b -> 1`` as ``p -> inf`` (PSF much smaller than the pixel) and ``b ~ p / sqrt(pi)`` as
    ``p -> 0``. ``expm1`` and a series below ``p = 1e-3`` keep it accurate and its gradient finite
    in float32 at both ends.

    Arguments:
        p: array, dimensionless ratio a/s >= 0.

    Returns:
        array of the same shape, in [0, 1].
    """
    p = jnp.asarray(p)
    small = p < 1e-3
    p_safe = jnp.where(small, 1.0, p)
    exact = erf(p_safe) + jnp.expm1(-(p_safe**2)) / (_SQRT_PI * p_safe)
    series = p / _SQRT_PI * (1.0 - p**2 / 6.0)
    return jnp.where(small, series, exact)


@jax.jit
def _overlap_squared(p: Float[ArrayLike, "*s"]) -> Float[Array, "*s"]:
    """``b(p)^2`` (:func:`pixel_overlap_factor`) as one compiled call (op by op it costs ~0.1 s)."""
    return pixel_overlap_factor(p) ** 2


def acf_2d_itir(lag_s: Float[ArrayLike, "*c"], params: ACFParams, optics: Optics) -> Float[Array, "*c"]:
    """2D ITIR-FCS autocorrelation of one pixel (Tang et al. 2024, eqs. 2-3).

    ``G(tau) = b(p(tau))^2 / N + G_inf`` with ``p(tau) = a / sqrt(w^2 + 4 D tau)``; ``a`` the
    object-space pixel side (um), ``w`` the PSF 1/e^2 radius (um), D in um^2/s, tau in s.

    Arguments:
        lag_s: array of lag times tau in s.
        params: ``ACFParams`` (N, D in um^2/s, G_inf); leaves may be arrays that broadcast
            against ``lag_s``.
        optics: ``Optics``.

    Returns:
        array of G(tau), the shape of ``lag_s`` broadcast with the parameters.
    """
    a = pixel_side_um(optics)
    w = psf_radius_um(optics)
    s2 = jnp.maximum(w**2 + 4.0 * params.d_um2_s * lag_s, 1e-30)
    b = pixel_overlap_factor(a / jnp.sqrt(s2))
    return b**2 / params.n_particles + params.g_inf


# ----------------------------------------------------------------------------------------------
# 3D SPIM-FCS
# ----------------------------------------------------------------------------------------------


def _spim_integrand(z1, z2, dtau, a, w, tan_a, wz):
    """Integrand of Tang et al. 2024, eq. 4, without the diffusion kernel, normalised so that the shape ``S``
    of a thin 2D sheet reduces to the 2D bracket: ``exp(-2(z1^2+z2^2)/w_z^2) * b(a / A)^2``
    with ``A^2 = (8 D tau + w(z1)^2 + w(z2)^2) / 2`` (eq. 5)."""
    wz1 = w + jnp.abs(z1) * tan_a
    wz2 = w + jnp.abs(z2) * tan_a
    big_a = jnp.sqrt(0.5 * (8.0 * dtau + wz1**2 + wz2**2))
    sheet = jnp.exp(-2.0 * (z1**2 + z2**2) / wz**2)
    return sheet * pixel_overlap_factor(a / big_a) ** 2


def _spim_lengths(optics: Optics) -> tuple:
    """``(a, w, w_z, tan alpha)`` of the 3D integrand: pixel side, PSF and sheet radii (um), cone."""
    return pixel_side_um(optics), psf_radius_um(optics), sheet_radius_um(optics), tan_half_angle(optics)


def _gauss_legendre_unit(order: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights mapped to [0, 1] (host constants)."""
    x, w = np.polynomial.legendre.leggauss(order)
    return 0.5 * (x + 1.0), 0.5 * w


def spim_shape(
    dtau_um2: Float[ArrayLike, "*s"], optics: Optics, order: int = 12, width: float = 6.5
) -> Float[Array, "*s"]:
    """Shape ``S(D tau)`` of the 3D SPIM-FCS ACF, ``G = S / N + G_inf`` (Tang et al. 2024, eqs. 4-5).

    ``S = 2 / (sqrt(pi) w_z) * int int K(z - z') exp(-2 (z^2 + z'^2) / w_z^2) b(a / A(z, z'))^2 dz dz'``
    with the diffusion kernel ``K(s) = exp(-s^2 / (4 D tau)) / sqrt(4 pi D tau)``. (Tang et al. 2024, eq. 4,
    divided by ``N = <C> a^2 sqrt(pi) w_z``; for ``tan(alpha) = 0`` this is the familiar
    ``b^2 / sqrt(1 + 4 D tau / w_z^2)``.)

    Quadrature. In rotated coordinates ``u = (z + z') / sqrt 2``, ``v = (z - z') / sqrt 2`` the
    weight factorises into a Gaussian in u (s.d. ``w_z / 2``) and a Gaussian in v
    (s.d. ``(1 / (D tau) + 4 / w_z^2)^(-1/2)``, as narrow as the diffusion length), and the
    integrand's only kinks (|z|, |z'|) lie on the lines ``|u| = |v|``. By symmetry the plane
    reduces to the two octants ``0 <= v <= u`` and ``0 <= u < v``; each is split where the v- (or
    u-) range saturates at ``width`` standard deviations, giving four smooth pieces, each
    integrated with an ``order x order`` tensor Gauss-Legendre rule. The rule adapts to D tau,
    so a ridge of width 10 nm and a flat kernel of width 30 um are resolved alike.

    Arguments:
        dtau_um2: array of D * tau in um^2 (> 0).
        optics: ``Optics`` (a, w, w_z, tan alpha are derived from it).
        order: int, Gauss-Legendre points per axis and piece (4 * order^2 nodes per value).
        width: float, truncation of each Gaussian in standard deviations.

    Returns:
        array of S, shape of ``dtau_um2``.
    """
    a, w, wz, tan_a = _spim_lengths(optics)
    t, wt = _gauss_legendre_unit(order)

    def one(dtau):
        dtau = jnp.maximum(dtau, 1e-30)
        sig_u = 0.5 * wz
        sig_v = 1.0 / jnp.sqrt(1.0 / dtau + 4.0 / wz**2)
        lu, lv = width * sig_u, width * sig_v
        kernel_norm = 1.0 / jnp.sqrt(4.0 * jnp.pi * dtau)

        def f(u, v):  # integrand incl. the diffusion kernel, at rotated coordinates
            z1 = (u + v) / np.sqrt(2.0)
            z2 = (u - v) / np.sqrt(2.0)
            return kernel_norm * jnp.exp(-(v**2) / (2.0 * dtau)) * _spim_integrand(z1, z2, dtau, a, w, tan_a, wz)

        def triangle(outer_len, outer_is_u):
            # outer in [0, L], inner in [0, outer]
            x = outer_len * t[:, None]
            y = x * t[None, :]
            wts = outer_len * wt[:, None] * x * wt[None, :]
            vals = f(x, y) if outer_is_u else f(y, x)
            return jnp.sum(wts * vals)

        def band(start, stop, inner_len, outer_is_u):
            # outer in [start, stop], inner in [0, inner_len]
            x = start + (stop - start) * t[:, None]
            y = inner_len * t[None, :]
            wts = (stop - start) * wt[:, None] * inner_len * wt[None, :]
            vals = f(x, y) if outer_is_u else f(y, x)
            return jnp.sum(wts * vals)

        m = jnp.minimum(lu, lv)
        octant_same_sign = triangle(m, True) + band(m, lu, lv, True)  # 0 <= v <= u
        octant_opposite = triangle(m, False) + band(m, lv, lu, False)  # 0 <= u < v
        integral = 4.0 * (octant_same_sign + octant_opposite)
        return 2.0 / (_SQRT_PI * wz) * integral

    dtau_um2 = jnp.asarray(dtau_um2)
    return jax.vmap(one)(dtau_um2.reshape(-1)).reshape(dtau_um2.shape)


def spim_shape_plugin_rectangle(dtau_um2: Float[ArrayLike, "*s"], optics: Optics) -> Float[Array, "*s"]:
    """The Imaging FCS plugin's 3D rule, for comparison: an 80 x 80 rectangle-rule sum over
    ``z, z'`` in ``[-2 w_z, 1.95 w_z]`` with step ``w_z / 20`` (docs/fcs.md, 'Models'), same integrand and
    normalisation as :func:`spim_shape`.

    Arguments:
        dtau_um2: array of D * tau in um^2.
        optics: ``Optics``.

    Returns:
        array of S, shape of ``dtau_um2``.
    """
    a, w, wz, tan_a = _spim_lengths(optics)
    z = wz * (jnp.arange(80) - 40) / 20.0
    z1, z2 = z[:, None], z[None, :]

    def one(dtau):
        kern = jnp.exp(-((z1 - z2) ** 2) / (4.0 * dtau)) / jnp.sqrt(4.0 * jnp.pi * dtau)
        total = jnp.sum(kern * _spim_integrand(z1, z2, dtau, a, w, tan_a, wz)) * (wz / 20.0) ** 2
        return 2.0 / (_SQRT_PI * wz) * total

    dtau_um2 = jnp.asarray(dtau_um2)
    return jax.vmap(one)(dtau_um2.reshape(-1)).reshape(dtau_um2.shape)


def acf_3d_spim(
    lag_s: Float[ArrayLike, "*c"], params: ACFParams, optics: Optics, order: int = 12
) -> Float[Array, "*c"]:
    """3D SPIM-FCS autocorrelation of one pixel by direct quadrature (Tang et al. 2024, eqs. 4-5).

    ``G(tau) = S(D tau) / N + G_inf``, S from :func:`spim_shape`.

    Arguments:
        lag_s: array of lag times in s.
        params: ``ACFParams`` (N, D in um^2/s, G_inf).
        optics: ``Optics`` with ``sigmaz`` and ``refractive_index`` set.
        order: int, Gauss-Legendre order per piece.

    Returns:
        array of G(tau).
    """
    dtau = jnp.broadcast_to(params.d_um2_s * lag_s, jnp.broadcast_shapes(jnp.shape(params.d_um2_s), jnp.shape(lag_s)))
    return spim_shape(dtau, optics, order) / params.n_particles + params.g_inf


class SpimShapeTable(NamedTuple):
    """``ln S`` on a uniform grid of ``ln(D tau)``, with exact slopes, for cubic Hermite
    interpolation (:func:`spim_shape_interpolated`).

    Attributes:
        log_dtau_start: float, ln of the first grid point (D tau in um^2).
        log_dtau_step: float, grid spacing in ln(D tau).
        log_shape: array (n,), ln S at the grid points.
        slope: array (n,), d ln S / d ln(D tau) at the grid points.
    """

    log_dtau_start: jax.Array
    log_dtau_step: jax.Array
    log_shape: jax.Array
    slope: jax.Array


def spim_shape_table(
    optics: Optics, dtau_min_um2: float = 1e-9, dtau_max_um2: float = 1e5, points: int = 385, order: int = 12
) -> SpimShapeTable:
    """Tabulate the 3D shape once per optics for fast fitting.

    Values and slopes come from :func:`spim_shape` and forward-mode autodiff; the default grid
    (1e-9 to 1e5 um^2, 385 points, step 0.084 in ln) interpolates S to about 1e-7 relative.
    Outside the grid ``ln S`` is extrapolated linearly (S tends to a constant as D tau -> 0 and to
    a power law as D tau -> inf).

    Arguments:
        optics: ``Optics``.
        dtau_min_um2, dtau_max_um2: float, grid range of D tau in um^2.
        points: int, grid size.
        order: int, Gauss-Legendre order of the underlying quadrature.

    Returns:
        ``SpimShapeTable``.
    """
    # grid from an exact host start and step: a float32 linspace's step is off by ~1e-5 relative,
    # which shifts the far end of the grid by ~1e-3 in ln(D tau)
    start = float(np.log(dtau_min_um2))
    step = float((np.log(dtau_max_um2) - start) / (points - 1))
    x = jnp.asarray(start + step * np.arange(points))

    def log_s(xi):
        return jnp.log(spim_shape(jnp.exp(xi), optics, order))

    values, slopes = jax.vmap(lambda xi: jax.jvp(log_s, (xi,), (jnp.ones_like(xi),)))(x)
    return SpimShapeTable(jnp.asarray(start), jnp.asarray(step), values, slopes)


def spim_shape_interpolated(dtau_um2: Float[ArrayLike, "*s"], table: SpimShapeTable) -> Float[Array, "*s"]:
    """S(D tau) by cubic Hermite interpolation of ``ln S`` in ``ln(D tau)``.

    Arguments:
        dtau_um2: array of D * tau in um^2 (> 0).
        table: ``SpimShapeTable`` from :func:`spim_shape_table`.

    Returns:
        array of S.
    """
    n = table.log_shape.shape[0]
    x = (jnp.log(jnp.maximum(dtau_um2, 1e-37)) - table.log_dtau_start) / table.log_dtau_step
    i = jnp.clip(jnp.floor(x), 0, n - 2).astype(jnp.int32)
    s = x - i  # in [0, 1] inside the grid, outside it the end cubic is not used (see below)
    h = table.log_dtau_step
    y0, y1 = table.log_shape[i], table.log_shape[i + 1]
    m0, m1 = table.slope[i] * h, table.slope[i + 1] * h
    s2, s3 = s * s, s * s * s
    inside = (2 * s3 - 3 * s2 + 1) * y0 + (s3 - 2 * s2 + s) * m0 + (-2 * s3 + 3 * s2) * y1 + (s3 - s2) * m1
    below = table.log_shape[0] + table.slope[0] * h * x
    above = table.log_shape[-1] + table.slope[-1] * h * (x - (n - 1))
    log_s = jnp.where(x < 0, below, jnp.where(x > n - 1, above, inside))
    return jnp.exp(log_s)


def acf_3d_spim_tabulated(
    lag_s: Float[ArrayLike, "*c"], params: ACFParams, table: SpimShapeTable
) -> Float[Array, "*c"]:
    """3D SPIM-FCS autocorrelation through a precomputed shape table; the fitting model.

    ``G(tau) = S(D tau) / N + G_inf`` with S from :func:`spim_shape_interpolated`.

    Arguments:
        lag_s: array of lag times in s.
        params: ``ACFParams`` (N, D in um^2/s, G_inf).
        table: ``SpimShapeTable`` for the optics of the data.

    Returns:
        array of G(tau).
    """
    return spim_shape_interpolated(params.d_um2_s * lag_s, table) / params.n_particles + params.g_inf
