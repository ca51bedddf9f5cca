"""FCS least squares (fluojax.fcs.estimate): the shape function agrees with the model it describes,
and start values recover a clean ACF's parameters."""

import jax.numpy as jnp
import numpy as np
import pytest

from fluojax.fcs import estimate, pipeline
from fluojax.fcs.correlator import lag_grid

LAG_S = lag_grid().lags * 1.06e-3


@pytest.mark.parametrize("geometry", ["2d", "3d"])
def test_shape_is_the_model_amplitude_of_one_particle(geometry, optics_2d, optics_3d):
    # G(tau) = S(D tau) / N + G_inf for both geometries (Wohland et al. 2010; Sankaran et al. 2010),
    # so model(N=1, G_inf=0) is S itself; 1e-5 relative: float32 model against the NumPy shape
    # (the 3D shape is the same interpolated table both ways)
    optics = optics_2d if geometry == "2d" else optics_3d
    model, make_args, shape = estimate.model_and_shape(pipeline.AnalysisSettings(1.06e-3, optics, model=geometry))
    d = 2.5
    g = np.asarray(model(jnp.asarray([1.0, d, 0.0], jnp.float32), make_args(jnp.asarray(LAG_S, jnp.float32))))
    np.testing.assert_allclose(g, shape(d * LAG_S), rtol=1e-5, atol=1e-9)


def test_start_values_of_a_clean_acf_are_near_the_truth(optics_2d):
    # N = S(0) / mean(G(tau_1), G(tau_2)): on a clean ACF exactly N S(0) / mean(S(D tau_1), S(D tau_2))
    # (float32 model: 1e-5); the half-decay start reads D from the first lag below half the
    # amplitude, so it is off by at most the lag grid's spacing (2^(1/8) within the first octaves,
    # 2 at the longest lags) -> a factor 1.5 window
    model, make_args, shape = estimate.model_and_shape(pipeline.AnalysisSettings(1.06e-3, optics_2d))
    truth = np.array([20.0, 1.0, 0.0])
    acf = np.asarray(model(jnp.asarray(truth, jnp.float32), make_args(jnp.asarray(LAG_S, jnp.float32))))[None]
    start = estimate.start_values(acf, LAG_S, shape)[0]
    expected_n = truth[0] * shape(np.array([1e-9]))[0] / np.mean(shape(truth[1] * LAG_S[:2]))
    np.testing.assert_allclose(start[0], expected_n, rtol=1e-5)
    assert 1 / 1.5 < start[1] / truth[1] < 1.5
    assert start[2] == 0.0


def test_unknown_geometry_is_refused(optics_2d):
    with pytest.raises(ValueError, match="unknown model"):
        estimate.model_and_shape(pipeline.AnalysisSettings(1.06e-3, optics_2d, model="1d"))


def test_fcs_solver_keeps_the_tuned_tolerances_only_for_their_backend():
    """FCS_SOLVER's noise-scale tolerances are optimistix's reading of atol/rtol; another backend
    gets the engine's defaults, and an unknown name is a one-line input error."""
    from fluojax import fit
    from fluojax.fcs.estimate import FCS_SOLVER, fcs_solver
    from fluojax.io import InputError

    assert fcs_solver("optimistix") is FCS_SOLVER
    other = fcs_solver("jaxopt")
    assert isinstance(other.backend, fit.JaxoptBackend)
    assert (other.rtol, other.atol) == (fit.LevenbergMarquardt().rtol, fit.LevenbergMarquardt().atol)
    with pytest.raises(InputError, match="unknown least-squares backend"):
        fcs_solver("scipy")
