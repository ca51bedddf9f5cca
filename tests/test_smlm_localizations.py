"""The localization table, its ThunderSTORM and SMLM Challenge files, and the rendered image.

References: ThunderSTORM's column labels and conventions (1-based frames and ids, quoted
"name [unit]" labels; x [nm] = x [px] * pixel size with pixel j spanning [j, j+1) px, as its
fitter adds j + 0.5 to the offset from the pixel centre), hand-written CSV files, and counts.
"""

import math
import os

import numpy as np
import pytest

from fluojax.io import InputError
from fluojax.smlm.localizations import (
    Localizations,
    concatenate,
    read_challenge_truth,
    read_localizations,
    read_thunderstorm,
    render,
    thunderstorm_csv,
    write_thunderstorm,
)


def _random_table(n, is_3d, seed=0):
    rng = np.random.default_rng(seed)
    return Localizations.build(
        rng.integers(0, 50, n),
        rng.uniform(0, 6400, n),
        rng.uniform(0, 6400, n),
        z_nm=rng.uniform(-500, 500, n) if is_3d else None,
        photons=rng.uniform(500, 5000, n),
        background=rng.uniform(1, 50, n),
        sigma_nm=rng.uniform(90, 150, n),
        uncertainty_xy_nm=rng.uniform(5, 20, n),
        uncertainty_z_nm=rng.uniform(20, 50, n) if is_3d else None,
    )


@pytest.mark.parametrize("is_3d", [False, True])
def test_thunderstorm_round_trip(tmp_path, is_3d):
    table = _random_table(40, is_3d)
    path = write_thunderstorm(table, tmp_path / "locs.csv")
    back = read_thunderstorm(path)
    np.testing.assert_array_equal(back.frame, table.frame)
    for name in ("x_nm", "y_nm", "z_nm", "photons", "background", "sigma_nm", "uncertainty_xy_nm", "uncertainty_z_nm"):
        # 10 significant digits are written: relative error <= 5e-10
        np.testing.assert_allclose(getattr(back, name), getattr(table, name), rtol=1e-9, equal_nan=True, err_msg=name)
    assert np.isnan(back.score).all()


def test_thunderstorm_header_and_one_based_frames_and_ids():
    table = Localizations.build([0, 4], [150.0, 250.0], [50.0, 60.0], photons=[1000.0, 2000.0], background=4.0)
    lines = thunderstorm_csv(table).splitlines()
    assert lines[0] == (
        '"id","frame","x [nm]","y [nm]","sigma [nm]","intensity [photon]","offset [photon]",'
        '"bkgstd [photon]","uncertainty_xy [nm]"'
    )
    # id 2, frame 5, bkgstd = sqrt(4) (Poisson), unknown values as NaN (Java's Double.parseDouble)
    assert lines[2] == "2,5,250,60,NaN,2000,4,2,NaN"


def test_thunderstorm_3d_header_adds_z_columns():
    header = thunderstorm_csv(_random_table(3, True)).splitlines()[0]
    labels = [label.strip('"') for label in header.split(",")]
    assert labels[4] == "z [nm]" and labels[-1] == "uncertainty_z [nm]"


def test_read_columns_in_another_order_and_in_px_and_um(tmp_path):
    # x in px (pixel 100 nm), y in um, z without unit (ThunderSTORM's default: nm), an extra chi2
    path = tmp_path / "other.csv"
    path.write_text(
        '"chi2","y [um]","x [px]","frame","z","intensity [photon]"\n3.5,1.25,10.5,1,-40,800\n1,0.5,0,7,12,900\n'
    )
    table = read_thunderstorm(path, pixel_nm=100.0)
    np.testing.assert_array_equal(table.frame, [0, 6])
    np.testing.assert_allclose(table.x_nm, [1050.0, 0.0], rtol=1e-12)
    np.testing.assert_allclose(table.y_nm, [1250.0, 500.0], rtol=1e-12)
    np.testing.assert_allclose(table.z_nm, [-40.0, 12.0], rtol=1e-12)
    np.testing.assert_allclose(table.photons, [800.0, 900.0], rtol=1e-12)


def test_intensity_in_adu_is_not_taken_for_photons(tmp_path):
    path = tmp_path / "adu.csv"
    path.write_text("frame,x [nm],y [nm],intensity [ADU]\n1,1,2,500\n")
    assert np.isnan(read_thunderstorm(path).photons).all()


def test_px_without_pixel_size_is_an_input_error(tmp_path):
    path = tmp_path / "px.csv"
    path.write_text("frame,x [px],y [px]\n1,1,2\n")
    with pytest.raises(InputError, match="pixel size"):
        read_thunderstorm(path)


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('"id","x [nm]","intensity [photon]"\n1,5,100\n')
    with pytest.raises(InputError) as caught:
        read_thunderstorm(path)
    message = str(caught.value)
    assert str(path) in message and "no frame, y columns" in message and "\n" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty"),
        ("\n\n", "empty"),
        ("frame,x [nm],y [nm]\n1,abc,3\n", "non-numeric"),
        ("frame,x,y\n1,2\n", "values per row"),
    ],
)
def test_empty_or_non_numeric_file_is_an_input_error(tmp_path, text, expected):
    path = tmp_path / "broken.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=expected):
        read_thunderstorm(path, pixel_nm=100.0)


def test_header_only_file_is_an_empty_table(tmp_path):
    path = tmp_path / "none.csv"
    path.write_text('"id","frame","x [nm]","y [nm]"\n')
    assert read_thunderstorm(path).n == 0


def test_frame_zero_is_refused(tmp_path):
    path = tmp_path / "zero.csv"
    path.write_text("frame,x [nm],y [nm]\n0,1,2\n")
    with pytest.raises(InputError, match="numbered from 1"):
        read_thunderstorm(path)


def test_write_refuses_an_existing_file_and_leaves_it_untouched(tmp_path):
    path = tmp_path / "locs.csv"
    path.write_text("mine\n")
    with pytest.raises(InputError, match="exists"):
        write_thunderstorm(_random_table(3, False), path)
    assert path.read_text() == "mine\n"
    assert os.listdir(tmp_path) == ["locs.csv"]  # no temporary sibling left
    write_thunderstorm(_random_table(3, False), path, overwrite=True)
    assert read_thunderstorm(path).n == 3
    assert os.listdir(tmp_path) == ["locs.csv"]


def test_challenge_truth_columns_and_one_based_frames(tmp_path):
    path = tmp_path / "activations.csv"
    # the challenge's label "intensity " ends in a space; columns in another order
    path.write_text("frame,Ground-truth,xnano,ynano,znano,intensity \n1,1,100.5,200,-300,2500\n3,2,50,60,70,800\n")
    truth = read_challenge_truth(path)
    np.testing.assert_array_equal(truth.frame, [0, 2])
    np.testing.assert_allclose(truth.x_nm, [100.5, 50.0], rtol=1e-12)
    np.testing.assert_allclose(truth.z_nm, [-300.0, 70.0], rtol=1e-12)
    np.testing.assert_allclose(truth.photons, [2500.0, 800.0], rtol=1e-12)
    assert read_localizations(path).n == 2  # recognised by its xnano column


def test_challenge_truth_without_header(tmp_path):
    path = tmp_path / "activations.csv"
    path.write_text("1,1,100,200,-300,2500\n2,4,50,60,70,800\n")
    truth = read_challenge_truth(path)
    np.testing.assert_array_equal(truth.frame, [0, 3])
    np.testing.assert_allclose(truth.y_nm, [200.0, 60.0], rtol=1e-12)


def test_build_select_concatenate():
    a = Localizations.build([0, 1, 2], [1.0, 2.0, 3.0], [4.0, 5.0, 6.0], photons=7.0)
    assert a.n == 3 and np.isnan(a.z_nm).all() and not a.is_3d
    np.testing.assert_array_equal(a.photons, [7.0, 7.0, 7.0])
    b = a.select(a.x_nm > 1.5)
    np.testing.assert_array_equal(b.frame, [1, 2])
    c = concatenate([a, b, Localizations.empty()])
    assert c.n == 5
    np.testing.assert_array_equal(c.x_nm, [1.0, 2.0, 3.0, 2.0, 3.0])
    with pytest.raises(InputError, match="2 values"):
        Localizations.build([0, 1, 2], [1.0, 2.0], [1.0, 2.0, 3.0])


def test_render_histogram_total_is_the_count_inside_the_field():
    rng = np.random.default_rng(2)
    # field 8 x 10 px of 100 nm = 1000 nm wide, 800 nm high; some localizations fall outside
    x, y = rng.uniform(-200, 1200, 500), rng.uniform(-200, 1000, 500)
    inside = int(np.count_nonzero((x >= 0) & (x < 1000) & (y >= 0) & (y < 800)))
    out = render(Localizations.build(np.zeros(500, int), x, y), 100.0, (8, 10), zoom=4, sigma_nm=0.0)
    assert out.image.shape == (32, 40)
    assert out.image.sum() == inside
    assert out.extent_nm == (0.0, 1000.0, 800.0, 0.0) and out.bin_nm == 25.0


def test_render_bin_of_a_pixel_centre():
    # the centre of camera pixel (row 2, column 5), ((5.5) a, (2.5) a), falls in bin
    # (2 zoom + zoom/2, 5 zoom + zoom/2)
    out = render(Localizations.build([0], [550.0], [250.0]), 100.0, (4, 8), zoom=4, sigma_nm=0.0)
    assert np.argwhere(out.image).tolist() == [[10, 22]]


def test_render_blur_keeps_mass_and_centroid():
    # an interior localization spread with s = 30 nm on 12.5 nm bins: total 1 (patch normalised)
    # and centroid at its position (a symmetric Gaussian; truncation at 4 s moves it < 1e-3 bin)
    x0, y0 = 512.3, 401.7
    out = render(Localizations.build([0], [x0], [y0]), 100.0, (8, 10), zoom=8, sigma_nm=30.0)
    total = out.image.sum(dtype=np.float64)
    assert total == pytest.approx(1.0, rel=1e-6)  # float32 image
    rows, cols = np.indices(out.image.shape)
    cx = ((cols + 0.5) * out.bin_nm * out.image).sum() / total
    cy = ((rows + 0.5) * out.bin_nm * out.image).sum() / total
    assert (cx, cy) == pytest.approx((x0, y0), abs=0.0125)
    # second moment: variance s^2 plus the bin's b^2/12
    var = (((cols + 0.5) * out.bin_nm - cx) ** 2 * out.image).sum() / total
    assert math.sqrt(var) == pytest.approx(math.sqrt(30.0**2 + 12.5**2 / 12), rel=1e-3)


def _bin_mass(x0, s, b, k):
    """Mass of a 1D Gaussian (mean x0, sd s) in bin [k b, (k+1) b)."""
    return 0.5 * (math.erf(((k + 1) * b - x0) / (math.sqrt(2) * s)) - math.erf((k * b - x0) / (math.sqrt(2) * s)))


def test_render_uses_each_localizations_uncertainty():
    # two localizations with uncertainties 10 and 40 nm on 12.5 nm bins; each bin holds the
    # Gaussian's integral over it: the product of two erf differences
    x, y, s = [310.0, 705.0], [401.0, 398.0], [10.0, 40.0]
    out = render(Localizations.build([0, 0], x, y, uncertainty_xy_nm=s), 100.0, (8, 10), zoom=8)
    b = out.bin_nm
    for x0, y0, s0 in zip(x, y, s):
        for dr, dc in [(0, 0), (1, -1), (-2, 3)]:
            r, c = int(y0 // b) + dr, int(x0 // b) + dc
            expected = _bin_mass(x0, s0, b, c) * _bin_mass(y0, s0, b, r)
            # the patch is truncated near 4 s and renormalised (relative change < 1e-4); float32
            assert out.image[r, c] == pytest.approx(expected, rel=1e-4, abs=1e-7)
