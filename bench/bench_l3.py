"""Benchmark the classical L3 localiser on a 512 x 512 x 500 int16 volume.

The volume is example_ct resampled (linear in z, bilinear in-plane) to 512 x 512 pixels and 500
slices, i.e. ~0.6-0.7 mm voxels, the size of a thin-slice abdominal CT. Prints wall time, the peak
of memory allocated by locate() itself (tracemalloc; numpy reports its buffers to it) and the
process peak RSS (which also holds the 262 MB input volume).

    python bench/bench_l3.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.l3_helpers import load_example, ref_z
from workers.l3.engine import get_localiser


def build_volume(nz: int = 500, n: int = 512) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    hu, z, sp = load_example()
    src = hu.astype(np.float32)
    new_z = np.linspace(z[0], z[-1], nz)
    pos = (new_z - z[0]) / (z[1] - z[0])
    out = np.empty((nz, n, n), dtype=np.int16)
    fy, fx = n / hu.shape[1], n / hu.shape[2]
    for k, p in enumerate(pos):
        k0 = min(int(np.floor(p)), hu.shape[0] - 2)
        w = float(p - k0)
        sl = src[k0] * (1 - w) + src[k0 + 1] * w
        out[k] = np.round(ndi.zoom(sl, (fy, fx), order=1, mode="nearest")).astype(np.int16)
    spacing = (sp[0] * hu.shape[1] / n, sp[1] * hu.shape[2] / n)
    return out, new_z, spacing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    t0 = time.perf_counter()
    hu, z, sp = build_volume()
    print(
        f"volume {hu.shape} {hu.dtype} ({hu.nbytes / 2**20:.0f} MiB), "
        f"spacing yx {sp[0]:.3f}x{sp[1]:.3f} mm, dz {z[1] - z[0]:.3f} mm; "
        f"built in {time.perf_counter() - t0:.1f} s"
    )
    loc = get_localiser()
    times = []
    peak = 0
    result = None
    for i in range(args.repeat):
        if i == 0:
            tracemalloc.start()
        t = time.perf_counter()
        result = loc.locate(hu, z, sp)
        times.append(time.perf_counter() - t)
        if i == 0:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    assert result is not None
    print(
        f"locate: min {min(times):.2f} s, median {float(np.median(times)):.2f} s over {len(times)} runs "
        f"(first run traced by tracemalloc, which slows it: {times[0]:.2f} s)"
    )
    print(f"peak memory allocated inside locate (tracemalloc): {peak / 2**20:.0f} MiB")
    print(f"process peak RSS (includes the input volume and the builder): {rss:.0f} MiB")
    err = None if result.z_mm is None else result.z_mm - ref_z()
    print(
        f"result: found={result.found} slice={result.slice_index} z={result.z_mm} "
        f"error={err if err is None else round(err, 2)} mm conf={result.confidence:.2f} "
        f"flags={result.flags}"
    )


if __name__ == "__main__":
    main()
