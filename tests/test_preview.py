"""Reduced-resolution JPEG 2000 decoding for the L3 search (workers/load/preview.py) and its use.

What must hold: the reduced decoder gives exactly pydicom's stored values at level 0 (so its
sign/precision handling is right), a JPEG 2000 study is searched on the preview while every
measured pixel comes from a full-resolution decode, and the answer is the one the full decode gives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from openjpeg import encode

from bench.make_series import make_series
from workers.l3.grid import TARGET_INPLANE_MM, block_factor
from workers.load.preview import (
    block_mean,
    codestream_precision,
    decode_reduced_j2k,
    first_frame,
    preview_affine,
    preview_level,
    reduced_shape,
)
from workers.load.source import load_series
from workers.pipeline import AnalysisOptions, analyse


@pytest.mark.parametrize(("signed", "bits"), [(True, 16), (True, 12), (False, 12), (False, 16), (False, 8)])
def test_level_zero_is_bit_exact(signed: bool, bits: int) -> None:
    rng = np.random.default_rng(bits)
    if signed:
        low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        pixels = np.clip(rng.normal(-200, 600, (61, 83)), low, high).astype(np.int16)
    else:
        pixels = rng.integers(0, 1 << bits, (61, 83)).astype(np.uint16 if bits > 8 else np.uint8)
    codestream = encode(pixels, bits_stored=bits)
    assert codestream_precision(codestream) == (bits, signed)
    decoded = decode_reduced_j2k(codestream, 0, int(signed), bits)
    assert decoded is not None
    np.testing.assert_array_equal(decoded, pixels)


def test_reduced_levels_are_local_means_on_the_jpeg2000_grid() -> None:
    rng = np.random.default_rng(0)
    pixels = (rng.normal(0, 20, (128, 96)) + np.linspace(-1000, 1000, 96)[None, :]).astype(np.int16)
    codestream = encode(pixels)
    for level in (1, 2):
        reduced = decode_reduced_j2k(codestream, level, 1, 16)
        assert reduced is not None
        assert reduced.shape == reduced_shape(128, 96, level)
        f = 2**level
        # Sample i of level r sits on full-resolution pixel f*i: compare with the local mean there.
        centre_cols = pixels[:, ::f].mean(axis=0)
        assert np.abs(reduced.mean(axis=0) - centre_cols[: reduced.shape[1]]).max() < 60
        # On the ramp, a half-pixel shift would move the mean by ~10 HU per level: it must not.
        assert abs(float(reduced.mean()) - float(centre_cols[: reduced.shape[1]].mean())) < 3


def test_what_the_reduced_decoder_cannot_do_is_refused_not_guessed() -> None:
    codestream = encode(np.zeros((64, 80), dtype=np.int16))
    assert decode_reduced_j2k(codestream, 9, 1, 16) is None  # more levels than the codestream has
    assert decode_reduced_j2k(b"not a codestream", 1, 1, 16) is None
    assert decode_reduced_j2k(codestream[:60], 1, 1, 16) is None  # truncated


def test_block_mean_and_preview_geometry() -> None:
    stored = np.arange(5 * 7, dtype=np.int16).reshape(5, 7)
    reduced = block_mean(stored, 1)
    assert reduced.shape == (3, 4) == reduced_shape(5, 7, 1)
    assert reduced[0, 0] == pytest.approx(stored[:2, :2].mean())
    assert reduced[2, 3] == pytest.approx(stored[4, 6])  # an edge block averages what exists
    affine = np.diag([3.0, 0.7, 0.7, 1.0])
    affine[:3, 3] = (10, 20, 30)
    scaled = preview_affine(affine, 2)
    np.testing.assert_allclose(scaled[:3, 1:3], affine[:3, 1:3] * 4)
    np.testing.assert_allclose(scaled[:3, 3], affine[:3, 3])
    np.testing.assert_allclose(scaled[:3, 0], affine[:3, 0])


def test_preview_level_gives_the_localisers_own_grid() -> None:
    for spacing in (0.45, 0.6, 0.7, 0.78, 0.88, 0.9, 0.9766, 1.2, 1.77, 2.0, 3.0):
        level = preview_level((spacing, spacing), TARGET_INPLANE_MM)
        # The localiser's block factor on the preview times the level's factor = on the original.
        assert block_factor(spacing * 2**level) * 2**level == block_factor(spacing)


@pytest.fixture(scope="module")
def j2k_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real example CT resampled to 512 × 512 (0.72 mm pixels), JPEG 2000 lossless."""
    return make_series(120, tmp_path_factory.mktemp("j2k") / "series", syntax="j2k")


@pytest.mark.slow
def test_a_jpeg2000_study_is_searched_on_the_preview_and_measured_at_full_resolution(
    j2k_series: Path, tmp_path: Path
) -> None:
    full = load_series(j2k_series)
    lazy = load_series(j2k_series, preview_mm=TARGET_INPLANE_MM)
    assert full.preview is None and full.full_resolution is None
    assert lazy.preview is not None and lazy.full_resolution is not None
    assert lazy.preview.hu.shape == (120, 128, 128)  # level 2: 0.72 mm → 2.9 mm, the L3 work grid
    assert not lazy.full_resolution.any()
    k = 60
    lazy.ensure_full_resolution([k - 1, k, k + 1])
    assert int(lazy.full_resolution.sum()) == 3
    np.testing.assert_array_equal(lazy.hu[k - 1 : k + 2], full.hu[k - 1 : k + 2])
    # The preview is the image at 1/4 size: close to 4 × 4 means of the full decode.
    means = full.hu[k, :512, :512].reshape(128, 4, 128, 4).mean(axis=(1, 3))
    body = means > -500
    assert np.median(np.abs(lazy.preview.hu[k][body] - means[body])) < 25
    first = pydicom.dcmread(sorted(j2k_series.iterdir())[0])
    assert codestream_precision(first_frame(first)) is not None

    with_preview = analyse(j2k_series, AnalysisOptions(), tmp_path / "preview")
    without = analyse(j2k_series, AnalysisOptions(preview=False), tmp_path / "full")
    assert with_preview["l3"] is not None and without["l3"] is not None
    # Same vertebra, same place within a slice (2.8 mm here).
    assert abs(with_preview["l3"]["z_mm"] - without["l3"]["z_mm"]) <= 3.0
    assert any("preview" in note for note in with_preview["input"]["volume"]["notes"])
    # On a given slice, every number is measured on the same full-resolution pixels.
    slice_k = with_preview["l3"]["slice_index"]
    a = analyse(j2k_series, AnalysisOptions(slice_index=slice_k), tmp_path / "a")
    b = analyse(j2k_series, AnalysisOptions(slice_index=slice_k, preview=False), tmp_path / "b")
    assert a["tissues"] == b["tissues"]
    assert a["metrics"] == b["metrics"]
    np.testing.assert_array_equal(
        np.load(tmp_path / "a" / "l3_labels.npy"), np.load(tmp_path / "b" / "l3_labels.npy")
    )
