"""Unit tests of the millimetre-aware helpers under the L3 localiser (fast, synthetic)."""

from __future__ import annotations

import numpy as np
import pytest

from workers.l3.discs import find_discs
from workers.l3.grid import block_factor, make_work_grid, running_mean_z, running_median_z


@pytest.mark.parametrize(("nz", "dz", "fz_expected"), [(11, 0.6, 2), (7, 3.0, 1), (10, 0.4, 3)])
def test_work_grid_matches_naive_block_mean(nz: int, dz: float, fz_expected: int) -> None:
    rng = np.random.default_rng(0)
    hu = rng.integers(-1100, 1500, size=(nz, 13, 17)).astype(np.int16)
    hu[:, :, 0] = -3024  # out-of-field padding must count as air (-1024), not pull means down
    z = np.arange(nz) * dz
    g = make_work_grid(hu, z, (0.95, 0.95), chunk=2)
    f = 2  # the power of two nearest to 2.5 / 0.95 = 2.6 (in log scale)
    assert (g.fy, g.fx, g.fz) == (f, f, fz_expected)
    clipped = np.maximum(hu.astype(np.float64), -1024.0)[:, :12, :16]
    for w, k0 in enumerate(range(0, nz, g.fz)):
        block = clipped[k0 : k0 + g.fz]
        ref = block.reshape(block.shape[0], 6, f, 8, f).mean(axis=(0, 2, 4))
        np.testing.assert_allclose(g.hu[w], ref, rtol=1e-5, atol=1e-3)
        assert g.z_mm[w] == pytest.approx(z[k0 : k0 + g.fz].mean())
    np.testing.assert_array_equal(g.z_native, z)


@pytest.mark.parametrize(
    ("spacing", "factor"),
    [(0.4, 8), (0.45, 4), (0.7, 4), (0.88, 4), (0.9, 2), (0.9766, 2), (1.77, 1), (3.0, 1), (5.0, 1)],
)
def test_block_factor_is_the_nearest_power_of_two(spacing: float, factor: int) -> None:
    """Work pixels stay within 2.5 mm × 2^±0.5 and are whole preview pixels at every JPEG 2000 level."""
    assert block_factor(spacing) == factor
    if factor > 1:
        assert 2.5 / np.sqrt(2) <= spacing * factor <= 2.5 * np.sqrt(2)


def test_uneven_series_is_not_binned() -> None:
    z = np.array([0.0, 0.6, 1.2, 3.0, 3.6, 4.2])
    g = make_work_grid(np.zeros((6, 6, 6), dtype=np.int16), z, (2.5, 2.5))
    assert g.fz == 1
    np.testing.assert_array_equal(g.z_mm, z)


def test_running_windows_use_millimetres() -> None:
    z = np.array([0.0, 1.0, 2.0, 10.0, 11.0])
    a = np.array([1.0, 2.0, 3.0, 100.0, 200.0])
    m = running_mean_z(a, z, 1.5)
    assert m[1] == pytest.approx(2.0)
    assert m[3] == pytest.approx(150.0)  # the 8 mm gap is not bridged by a 1.5 mm window
    assert running_median_z(a, z, 1.5)[0] == pytest.approx(1.5)


def test_disc_chain_on_synthetic_profile() -> None:
    """Bodies 26 mm + discs 8 mm with bright endplates and a broad soft dip in one body: the chain
    must find the discs (every 34 mm), not the soft dip."""
    z = np.arange(0.0, 240.0, 1.0)
    p = np.full(z.size, 180.0)
    discs = np.arange(20.0, 240.0, 34.0)
    for d in discs:
        p[np.abs(z - d) <= 4] = 90.0
        p[(np.abs(z - d) > 4) & (np.abs(z - d) <= 6)] = 260.0  # endplates
    p[(z > 110) & (z < 126)] -= 60.0  # broad low-density region inside a body
    p += np.random.default_rng(1).normal(0, 5, z.size)
    r = find_discs(z, p, np.ones(z.size, dtype=bool))
    found = np.array([d.z for d in r.discs])
    inner = discs[(discs > 10) & (discs < 230)]
    assert found.size == inner.size, found
    np.testing.assert_allclose(found, inner, atol=2.0)
