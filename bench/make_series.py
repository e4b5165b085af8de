"""Build benchmark CT series of realistic size from the real example CT.

example_ct (3 mm, 122 × 101 × 112) is resampled (trilinear) to 512 × 512 pixels per slice and N
slices over the same anatomy, then written as a head-first-supine DICOM series with the test
fixture builder, uncompressed or JPEG 2000. The anatomy is real, the resolution is that of a
clinical study, so loader, localiser and segmenter meet clinical array sizes.

    python bench/make_series.py --slices 500 --syntax j2k --out /tmp/bench-500-j2k
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.dicom_builder import (  # noqa: E402
    ExplicitVRLittleEndian,
    Geometry,
    JPEG2000Lossless,
    SeriesOptions,
    write_series,
)
from workers.load.source import load_series  # noqa: E402

EXAMPLE_CT = ROOT.parent / "shared" / "data" / "example_ct" / "example_ct.nii.gz"
SYNTAXES = {"raw": ExplicitVRLittleEndian, "j2k": JPEG2000Lossless}


def make_series(n_slices: int, out: Path, syntax: str = "raw", size: int = 512) -> Path:
    view = load_series(EXAMPLE_CT).canonical()
    hu = np.asarray(view.hu, dtype=np.float32)
    nz, ny, nx = hu.shape
    side = max(ny, nx)
    square = np.full((nz, side, side), -1024.0, dtype=np.float32)
    square[:, (side - ny) // 2 : (side - ny) // 2 + ny, (side - nx) // 2 : (side - nx) // 2 + nx] = hu
    factors = (n_slices / nz, size / side, size / side)
    volume = ndimage.zoom(square, factors, order=1, mode="nearest", grid_mode=True)
    volume = np.clip(np.rint(volume), -1024, 3071).astype(np.int16)
    dy = view.spacing_yx_mm[0] * side / size
    dz = float(view.z_mm[-1] - view.z_mm[0] + 3.0) / n_slices
    origin = view.affine[:3, 3]
    positions = np.array(
        [[origin[0], origin[1], view.z_mm[0] - 1.5 + dz * (k + 0.5)] for k in range(n_slices)]
    )
    geometry = Geometry(
        rows=size, columns=size, pixel_spacing=(dy, dy), orientation=(1, 0, 0, 0, 1, 0), positions=positions
    )
    options = SeriesOptions(
        transfer_syntax=SYNTAXES[syntax],
        description=f"benchmark {n_slices} x {size}^2 ({syntax})",
        slice_thickness=dz,
        patient_size_m=1.72,
        patient_weight_kg=70.0,
    )
    write_series(out, volume, geometry, options)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--syntax", choices=sorted(SYNTAXES), default="raw")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    print(make_series(args.slices, args.out, args.syntax))


if __name__ == "__main__":
    main()
