"""Point-spread-function models of single-molecule localization: pure, jit/vmap/grad-able.

One emitter at ``(x, y, z)`` nm emitting ``N`` photons (expected photo-electrons per focal plane)
gives in pixel ``(i, j)`` of plane ``k`` the expected count

    mu_kij = N * P_k(x, y, z; pixel ij),

with ``P_k`` the fraction of the photons that land in the pixel. Every PSF here is an
axis-aligned Gaussian, so ``P_k`` separates into an x factor and a y factor
(``P = E_x(j) E_y(i)``) and a frame of M emitters is one contraction of (M, planes, y) and
(M, planes, x) factors (:func:`frame_expected`), never a loop over emitters or pixels.

**Coordinates (one convention everywhere in fluojax.smlm).** Positions are in nm. The origin is
the outer corner of the first pixel: pixel (row i, column j) of a field of pixel size ``a`` nm
spans ``x in [j a, (j+1) a)``, ``y in [i a, (i+1) a)``; its centre is at ``((j + 1/2) a, (i + 1/2) a)``
(as in Aritake et al. 2021, whose pixel centres are at ``(i + 0.5) 192 nm``). Images are
``(..., y, x)``; a multi-plane frame is ``(planes, y, x)``. ``z`` is the emitter's axial position in
nm, in the frame of the focal planes (quad-plane: planes at z = 0, 400, 800, 1200 nm).
A :class:`Grid` holds the pixel centres of a field or of a region of interest (ROI), so the same
model renders a 64 x 64 frame and an 11 x 11 spot.

**Pixel sampling.** ``P`` is either the Gaussian integrated over the pixel (the standard model of
MLE localization, Smith et al. 2010, eq. 3; Mortensen et al. 2010):

    E_x(j) = 1/2 [erf((x_j + a/2 - x) / (sqrt(2) s)) - erf((x_j - a/2 - x) / (sqrt(2) s))],

or the Gaussian density at the pixel centre times the pixel area (point sampling,
``E_x(j) = a / (sqrt(2 pi) s) exp(-(x_j - x)^2 / (2 s^2))``), which is the quad-plane model of
Aritake et al. 2021, eqs. 4-6, exactly: their peak ``a(dz) = a' / (2 pi r(dz)^2)`` for a molecule
of weight w is ``N a^2 / (2 pi r^2)`` with ``N = w a' / a^2`` photons (:func:`weight_to_photons`).
Both factors come from the optics engine, :func:`fluojax.optics.pixel_fractions`.

PSF kinds (frozen dataclasses implementing :class:`PSF`; registry :data:`PSFS`):

* :class:`Gaussian2D` - a symmetric Gaussian of s.d. ``sigma_nm``, one plane, no z.
* :class:`Astigmatic3D` - one plane, s.d.s ``s_x(z)``, ``s_y(z)`` from the defocus curves of
  Huang et al. 2008 (focal lines at ``z = -c`` and ``z = +c``).
* :class:`QuadPlane` - four planes, width ``r(dz)`` from the defocus curve of Aritake et al.
  2021, eq. 5, with the constants of their Table 2 (:meth:`QuadPlane.table_2`) or of the authors'
  released code (:meth:`QuadPlane.released_code`, whose quartic coefficient B differs:
  0.122484 against 6.27e-3), and a lateral drift per plane (Aritake et al. 2021, eq. 7).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from fluojax.io import require
from fluojax.optics import pixel_fractions

__all__ = [
    "PSF",
    "PSFS",
    "QUADPLANE_A_PRIME",
    "Astigmatic3D",
    "Emitters",
    "Gaussian2D",
    "Grid",
    "QuadPlane",
    "frame_expected",
    "pixel_grid",
    "spot_expected",
    "weight_to_photons",
]

#: a' of Aritake et al. 2021, Table 2: peak amplitude times 2 pi r^2 (count nm^2) of a molecule of weight 1.
QUADPLANE_A_PRIME = 5.0e7


class Grid(NamedTuple):
    """Pixel centres of a field or of a region of interest, in nm.

    Attributes:
        x_nm: (nx,) centres of the columns, nm.
        y_nm: (ny,) centres of the rows, nm.
        pixel_nm: pixel size (side of a square pixel), nm.
    """

    x_nm: Float[Array, " nx"]
    y_nm: Float[Array, " ny"]
    pixel_nm: Float[ArrayLike, ""]


def pixel_grid(shape: tuple[int, int], pixel_nm: float, origin_px: tuple[ArrayLike, ArrayLike] = (0, 0)) -> Grid:
    """The :class:`Grid` of a ``shape = (ny, nx)`` block of pixels whose first pixel is (row, column) ``origin_px``.

    Centres at ``((origin_x + j + 1/2) a, (origin_y + i + 1/2) a)`` nm. ``origin_px`` may be traced
    (a spot's corner inside a frame), ``shape`` is static.

    Arguments:
        shape: (ny, nx) pixels.
        pixel_nm: pixel size a, nm.
        origin_px: (row, column) of the block's first pixel in the full frame.
    """
    ny, nx = shape
    row, col = origin_px
    x = (jnp.arange(nx, dtype=jnp.float32) + 0.5 + col) * pixel_nm
    y = (jnp.arange(ny, dtype=jnp.float32) + 0.5 + row) * pixel_nm
    return Grid(x, y, pixel_nm)


class Emitters(NamedTuple):
    """Emitters (a frame's, or a batch's): every leaf has the same shape ``(..., M)``.

    Attributes:
        x_nm, y_nm: lateral position, nm (origin at the first pixel's outer corner).
        z_nm: axial position, nm (ignored by 2D PSFs).
        photons: expected photons per focal plane (0 marks an absent emitter).
    """

    x_nm: Float[Array, "*batch m"]
    y_nm: Float[Array, "*batch m"]
    z_nm: Float[Array, "*batch m"]
    photons: Float[Array, "*batch m"]


def weight_to_photons(weight: Float[ArrayLike, "*shape"], pixel_nm: float, a_prime: float = QUADPLANE_A_PRIME):
    """Photons per plane ``N = w a' / a^2`` of a molecule of weight ``w`` (Aritake et al. 2021, eqs. 4-6).

    The point-sampled Gaussian of peak ``w a' / (2 pi r^2)`` sums over pixels of side ``a`` to
    ``w a' / a^2`` (1356 for w = 1, a = 192 nm), which is what the PSF models here call photons.

    Arguments:
        weight: molecule weight w (Aritake et al. 2021 draw it from U(0.3, 1)).
        pixel_nm: pixel size a, nm.
        a_prime: a', count nm^2.
    """
    return jnp.asarray(weight) * (a_prime / pixel_nm**2)


class PSF(abc.ABC):
    """A separable Gaussian PSF over one or more focal planes. A new PSF kind is a new subclass.

    Subclasses are frozen dataclasses (static arguments of compiled code) defining
    :meth:`widths` and the number of planes.
    """

    integrated: bool = True
    """True: the Gaussian integrated over each pixel (erf); False: point-sampled at pixel centres."""

    @property
    @abc.abstractmethod
    def planes(self) -> int:
        """Number of focal planes (image channels)."""

    @property
    def three_d(self) -> bool:
        """Whether the PSF depends on z (so z can be estimated)."""
        return True

    @abc.abstractmethod
    def widths(
        self, z_nm: Float[ArrayLike, "*shape"]
    ) -> tuple[Float[Array, "*shape planes"], Float[Array, "*shape planes"]]:
        """Gaussian s.d.s ``(s_x, s_y)`` in nm in every plane of an emitter at ``z_nm``: each ``z.shape + (planes,)``."""

    def factors(
        self, emitters: Emitters, grid: Grid, drift_nm: Float[ArrayLike, "planes 2"] | None = None
    ) -> tuple[Float[Array, "*batch m planes ny"], Float[Array, "*batch m planes nx"]]:
        """The separable factors ``(N E_y, E_x)`` of every emitter in every plane.

        ``mu[k, i, j] = sum_m (N E_y)[m, k, i] E_x[m, k, j]``.

        Arguments:
            emitters: :class:`Emitters`, leaves ``(..., M)``.
            grid: pixel centres.
            drift_nm: optional (planes, 2) lateral shift (dx, dy) in nm of each plane's image: an
                emitter at x appears in plane k at ``x + dx_k`` (Aritake et al. 2021, eq. 7).
        """
        sx, sy = self.widths(emitters.z_nm)  # (..., M, planes)
        x = jnp.asarray(emitters.x_nm)[..., None]
        y = jnp.asarray(emitters.y_nm)[..., None]
        if drift_nm is not None:
            drift = jnp.asarray(drift_nm)
            x, y = x + drift[..., 0], y + drift[..., 1]
        ex = pixel_fractions(grid.x_nm, jnp.broadcast_to(x, sx.shape), sx, grid.pixel_nm, self.integrated)
        ey = pixel_fractions(grid.y_nm, jnp.broadcast_to(y, sy.shape), sy, grid.pixel_nm, self.integrated)
        photons = jnp.asarray(emitters.photons)[..., None, None]
        return photons * ey, ex


@dataclasses.dataclass(frozen=True)
class Gaussian2D(PSF):
    """A symmetric 2D Gaussian PSF of s.d. ``sigma_nm`` (one plane; z is ignored).

    Attributes:
        sigma_nm: Gaussian s.d., nm (about 0.21 lambda / NA for the Airy disk's best fit).
        integrated: integrate over pixels (default) or point-sample.
    """

    sigma_nm: float = 130.0
    integrated: bool = True

    def __post_init__(self):
        require(self.sigma_nm > 0, f"PSF sigma {self.sigma_nm} nm: must be > 0")

    @property
    def planes(self) -> int:
        return 1

    @property
    def three_d(self) -> bool:
        return False

    def widths(self, z_nm):
        s = jnp.full(jnp.shape(z_nm) + (1,), self.sigma_nm, jnp.result_type(jnp.asarray(z_nm).dtype, jnp.float32))
        return s, s


@dataclasses.dataclass(frozen=True)
class Astigmatic3D(PSF):
    """Astigmatic 3D PSF: one plane, elliptical Gaussian with z-dependent s.d.s (Huang et al. 2008, eq. 1).

        s_x(z) = s0 sqrt(1 + u_x^2 + A_x u_x^3 + B_x u_x^4),   u_x = (z - c) / d,
        s_y(z) = s0 sqrt(1 + u_y^2 + A_y u_y^3 + B_y u_y^4),   u_y = (z + c) / d,

    so the x focal line is at ``z = c`` and the y focal line at ``z = -c``; z = 0 is midway, where
    the spot is round.

    Attributes:
        sigma0_nm: s0, in-focus s.d., nm.
        focal_offset_nm: c, half the distance between the focal lines, nm.
        depth_nm: d, the focal depth, nm.
        a_x, b_x, a_y, b_y: the cubic and quartic coefficients (dimensionless).
        integrated: integrate over pixels (default) or point-sample.
    """

    sigma0_nm: float = 130.0
    focal_offset_nm: float = 250.0
    depth_nm: float = 280.0
    a_x: float = 0.0
    b_x: float = 0.0
    a_y: float = 0.0
    b_y: float = 0.0
    integrated: bool = True

    def __post_init__(self):
        require(self.sigma0_nm > 0, f"PSF sigma0 {self.sigma0_nm} nm: must be > 0")
        require(self.depth_nm > 0, f"focal depth {self.depth_nm} nm: must be > 0")

    @property
    def planes(self) -> int:
        return 1

    def widths(self, z_nm):
        z = jnp.asarray(z_nm, jnp.result_type(jnp.asarray(z_nm).dtype, jnp.float32))[..., None]
        ux = (z - self.focal_offset_nm) / self.depth_nm
        uy = (z + self.focal_offset_nm) / self.depth_nm
        sx = self.sigma0_nm * jnp.sqrt(1 + ux**2 + self.a_x * ux**3 + self.b_x * ux**4)
        sy = self.sigma0_nm * jnp.sqrt(1 + uy**2 + self.a_y * uy**3 + self.b_y * uy**4)
        return sx, sy


@dataclasses.dataclass(frozen=True)
class QuadPlane(PSF):
    """Quad-plane (multifocus) PSF of Aritake et al. 2021, eqs. 4-6: one symmetric Gaussian per plane.

    In plane k, focused at ``z_k``, an emitter at z has s.d. (their width r, eq. 5)

        r(dz) = r0 sqrt(1 + u^2 + A u^3 + B u^4),   u = dz / D,   dz = z_k - z

    (the sign matters because of the odd A u^3 term) and peak ``a' w / (2 pi r^2)`` (eq. 6),
    which with ``N = w a' / a^2`` photons is the point-sampled Gaussian of this module. The
    authors point-sample (the default here); ``integrated=True`` integrates over pixels.

    Attributes:
        r0_nm: in-focus s.d. r0, nm.
        depth_nm: focal depth D, nm.
        a3: cubic coefficient A.
        b4: quartic coefficient B.
        plane_z_nm: focal planes z_k, nm.
        integrated: False (the paper's point sampling) or True (pixel integration).
    """

    r0_nm: float = 133.0
    depth_nm: float = 302.0
    a3: float = 7.37e-4
    b4: float = 6.27e-3
    plane_z_nm: tuple[float, ...] = (0.0, 400.0, 800.0, 1200.0)
    integrated: bool = False

    def __post_init__(self):
        require(self.r0_nm > 0, f"PSF r0 {self.r0_nm} nm: must be > 0")
        require(self.depth_nm > 0, f"focal depth {self.depth_nm} nm: must be > 0")
        require(len(self.plane_z_nm) >= 1, "a multifocus PSF needs at least one focal plane")

    @classmethod
    def table_2(cls, integrated: bool = False) -> QuadPlane:
        """The constants of Aritake et al. 2021, Table 2: r0 133 nm, D 302 nm, A 7.37e-4, B 6.27e-3."""
        return cls(133.0, 302.0, 7.37e-4, 6.27e-3, integrated=integrated)

    @classmethod
    def released_code(cls, integrated: bool = False) -> QuadPlane:
        """The constants of the authors' released code (Aritake et al. 2021): r0 133.0525 nm,
        D 302.3763 nm, A 7.37e-4 and B 0.122484 (not Table 2's 6.27e-3; the width at 800 nm
        defocus is then 498 nm instead of 384 nm)."""
        return cls(133.0525, 302.3763, 0.000737, 0.122484, integrated=integrated)

    @property
    def planes(self) -> int:
        return len(self.plane_z_nm)

    def width_nm(self, dz_nm: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        """The defocus curve r(dz) in nm (Aritake et al. 2021, eq. 5), dz = plane z - emitter z."""
        u = jnp.asarray(dz_nm) / self.depth_nm
        return self.r0_nm * jnp.sqrt(1 + u**2 + self.a3 * u**3 + self.b4 * u**4)

    def widths(self, z_nm):
        z = jnp.asarray(z_nm, jnp.result_type(jnp.asarray(z_nm).dtype, jnp.float32))
        r = self.width_nm(jnp.asarray(self.plane_z_nm, z.dtype) - z[..., None])
        return r, r


#: PSF kinds by name (the command line's ``--psf``): default instances.
PSFS: dict[str, PSF] = {
    "gaussian": Gaussian2D(),
    "astigmatic": Astigmatic3D(),
    "quadplane": QuadPlane.table_2(),
    "quadplane-released": QuadPlane.released_code(),
}


def frame_expected(
    psf: PSF,
    emitters: Emitters,
    grid: Grid,
    background: Float[ArrayLike, "*bg"] = 0.0,
    drift_nm: Float[ArrayLike, "planes 2"] | None = None,
) -> Float[Array, "planes ny nx"]:
    """Expected photons per pixel of one frame: ``mu = b + sum_m N_m P(x_m, y_m, z_m)``.

    Arguments:
        psf: the PSF kind (static).
        emitters: :class:`Emitters` of one frame, leaves (M,); ``photons = 0`` for absent ones.
        grid: the frame's pixel centres (:func:`pixel_grid`).
        background: photons per pixel, a scalar or an array broadcasting to (planes, ny, nx).
        drift_nm: optional (planes, 2) lateral image shift per plane, nm.

    Returns:
        (planes, ny, nx) expected photons.
    """
    ey, ex = psf.factors(emitters, grid, drift_nm)
    return jnp.einsum("mky,mkx->kyx", ey, ex) + background


def spot_expected(
    psf: PSF,
    position_nm: Float[ArrayLike, " 3"],
    photons: Float[ArrayLike, ""],
    background: Float[ArrayLike, ""],
    grid: Grid,
    drift_nm: Float[ArrayLike, "planes 2"] | None = None,
) -> Float[Array, "planes ny nx"]:
    """Expected photons of one emitter on a constant background: the model of a per-spot fit.

    Arguments:
        psf: the PSF kind (static).
        position_nm: (x, y, z) of the emitter, nm (z ignored by 2D PSFs).
        photons: N, photons per plane.
        background: b, photons per pixel.
        grid: the spot's pixel centres (:func:`pixel_grid` with the ROI's origin).
        drift_nm: optional (planes, 2) lateral image shift per plane, nm.

    Returns:
        (planes, ny, nx) expected photons.
    """
    p = jnp.asarray(position_nm)
    one = Emitters(p[0:1], p[1:2], p[2:3], jnp.reshape(photons, (1,)))
    ey, ex = psf.factors(one, grid, drift_nm)
    return ey[0][:, :, None] * ex[0][:, None, :] + background
