"""Run the L3 localiser on every validation case and write docs/validation-l3.md.

    python scripts/validate_l3.py [--out docs/validation-l3.md] [--qc-dir DIR]

Cases: the shared example CT (3 mm, NIfTI) and generated variants of it (resampled in z and
in-plane, noise, crops removing one anchor or L3 itself, uneven z, osteopenia-like bone), plus the
shared 20-slice DICOM series (T11-T12). Reference: mid-L3 body = example_ct slice 73.72 (centroid
of TotalSegmentator's vertebrae_pp_refined L3 label), converted to patient z. Errors are reported
in mm and in original 3 mm slices. The references are used here only, never by the localiser.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import l3_helpers as l3h  # noqa: E402
from workers.l3.engine import get_localiser  # noqa: E402
from workers.l3.result import L3Result  # noqa: E402
from workers.pictures.level import render_l3_qc  # noqa: E402

REVIEW_FLAGS = {"anchors_disagree", "vertebral_level_ambiguous", "z_gap_near_l3", "thick_slices"}


def extra_cases() -> list[l3h.Case]:
    hu, z, sp = l3h.load_example()
    rz = l3h.ref_z()
    out = []
    h06, z06 = l3h.resample_z(hu, z, 0.6)
    out.append(l3h.Case("resampled z 0.6 mm (thin)", h06, z06, sp, rz))
    out.append(l3h.Case("noise sigma 40 HU", l3h.add_noise(hu, 40.0, seed=3), z.copy(), sp, rz))
    h = hu.astype(np.float32)
    m = h > 60
    h[m] = 60 + (h[m] - 60) * 0.5
    out.append(l3h.Case("osteopenia-like (bone contrast x0.5)", h.astype(np.int16), z.copy(), sp, rz))
    keep = np.ones(hu.shape[0], dtype=bool)
    keep[71:77] = False
    gap_flag = ("z_gap_near_l3",)
    out.append(l3h.Case("18 mm gap across mid-L3", hu[keep], z[keep], sp, rz, expect_flags=gap_flag))
    out.append(l3h.Case("arterial contrast (aorta 350 HU)", l3h.add_aorta(hu, sp, 350.0), z.copy(), sp, rz))
    out.append(l3h.Case("arms touching the flanks", l3h.add_arms(hu, sp), z.copy(), sp, rz))
    out.append(l3h.Case("scoliosis-like shift 20 mm", l3h.shift_x(hu, sp, 20.0), z.copy(), sp, rz))
    out.append(l3h.Case("rotated 10 degrees on the table", l3h.rotate_inplane(hu, 10.0), z.copy(), sp, rz))
    h7, z7 = l3h.resample_z(hu, z, 7.0)
    out.append(l3h.Case("resampled z 7 mm (beyond spec)", h7, z7, sp, rz))
    hl, zl = l3h.crop(hu, z, 56, 100)
    out.append(l3h.Case("crop 56-100 (L4-L1, no anchor)", hl, zl, sp, rz))
    return out


HCC = l3h.DATA / "hcc_tace_seg_048" / "dicom"
HCC_MID_L3_Z = -371.0  # one reader's count from the ribs (../shared/data/README.md)


def hcc_cases() -> list[l3h.Case]:
    """The real liver-protocol CT that stops above the sacrum, loaded by the product's loader, and
    at 5 mm: with its top slices (the T12 rib heads) kept, and with the grid started at the bottom,
    which cuts the rib heads as a series stopping there would."""
    from workers.load.source import load_series

    view = load_series(HCC).canonical()
    hu, z, sp = np.asarray(view.hu), np.asarray(view.z_mm), view.spacing_yx_mm
    name = "hcc_tace_seg_048 (real, 0.7 mm x 2.5 mm, no sacrum, no crest)"
    out = [l3h.Case(name, hu, z, sp, HCC_MID_L3_Z)]
    for keep_top, what in ((True, "rib heads kept"), (False, "rib heads cut by the top")):
        h5, z5 = l3h.resample_z(hu, z, 5.0, keep_top)
        out.append(l3h.Case(f"hcc_tace_seg_048 at 5 mm ({what})", h5, z5, sp, HCC_MID_L3_Z))
    return out


def cue_row(name: str, r: L3Result) -> list[str]:
    """One row of the cue table: each cue's position and the L3 it implies, and its verdict."""
    cells = [name]
    by_name = {c.name: c for c in r.cues}
    for key in CUE_COLUMNS:
        c = by_name.get(key)
        if c is None:
            cells.append("-")
            continue
        if c.vote is None:
            cells.append(f"z {c.z_mm:.0f}: abstains ({c.note})")
            continue
        implied = (
            f"L3 at {c.implied_l3_z_mm:.0f}" if c.implied_l3_z_mm is not None else "L3 outside the chain"
        )
        verdict = "agrees" if c.agrees else "**disagrees**"
        cells.append(
            f"{c.structure.split(' of ')[0]} z {c.z_mm:.0f} -> {implied}, w {c.weight:.2f}, {verdict}"
        )
    cells.append(f"{r.confidence:.2f}")
    return cells


CUE_COLUMNS = ("sacrum", "lowest_rib", "iliac_crest", "transverse_processes")


def main() -> int:
    ap = argparse.ArgumentParser(description="L3 localiser validation table")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "validation-l3.md")
    ap.add_argument("--qc-dir", type=Path, default=None, help="also write a QC PNG per case here")
    args = ap.parse_args()

    loc = get_localiser()
    cases = l3h.build_cases() + extra_cases() + l3h.cue_cases() + hcc_cases()
    try:
        dh, dz, dsp = l3h.load_dicom_canonical()
        cases.append(l3h.Case("DICOM example_ct_dicom (T11-T12, 2 mm, contrast)", dh, dz, dsp, None))
    except Exception as exc:  # pydicom or the decoder missing: say so in the table
        print(f"DICOM case skipped: {exc}", file=sys.stderr)

    rows = []
    cue_rows = []
    for c in cases:
        t0 = time.perf_counter()
        r = loc.locate(c.hu, c.z_mm, c.spacing)
        dt = time.perf_counter() - t0
        if args.qc_dir is not None:
            safe = "".join(ch if ch.isalnum() else "_" for ch in c.name)[:60]
            render_l3_qc(c.hu, c.z_mm, c.spacing, r, args.qc_dir / f"{safe}.png", title=c.name)
        if r.found and r.z_mm is not None:
            err = r.z_mm - c.ref_z if c.ref_z is not None else None
            ok = err is not None and abs(err) <= c.z_tol_mm and all(f in r.flags for f in c.expect_flags)
            review = bool(set(r.flags) & REVIEW_FLAGS) and r.confidence < 0.5
            if ok and r.method == "weak_cues" and r.confidence >= 0.5:
                ok = False  # without an anchor a result may only be offered for review
            if ok:
                verdict = "pass"
            elif c.ref_z is None:
                verdict = "FAIL (L3 not in FOV but found)"
            else:
                verdict = "FAIL, flagged for review" if review else "FAIL (silent)"
            rows.append(
                [
                    c.name,
                    "yes",
                    str(r.slice_index),
                    f"{r.z_mm:.1f}",
                    "-" if err is None else f"{err:+.1f}",
                    "-" if err is None else f"{err / l3h.ORIG_DZ:+.2f}",
                    f"{r.body_range[0]}-{r.body_range[1]}" if r.body_range else "-",
                    f"{r.confidence:.2f}",
                    r.method,
                    ", ".join(r.flags) or "none",
                    f"{dt:.2f}",
                    verdict,
                ]
            )
        else:
            if c.ref_z is None:
                verdict = "pass (correctly not found)"
            elif "no_anchor" in r.flags:
                verdict = "refused: no anchor (L3 present)"
            else:
                verdict = "FAIL (missed)"
            rows.append(
                [
                    c.name,
                    "no",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    f"{r.confidence:.2f}",
                    r.method,
                    ", ".join(r.flags) or "none",
                    f"{dt:.2f}",
                    f"{verdict}: {r.reason}",
                ]
            )
        cue_rows.append(cue_row(c.name, r))
        print(" | ".join(rows[-1]))

    head = [
        "case",
        "found",
        "slice",
        "z (mm)",
        "error (mm)",
        "error (3 mm slices)",
        "L3 body slices",
        "confidence",
        "method",
        "flags",
        "time (s)",
        "verdict / reason",
    ]
    lines = [
        "# L3 localiser validation",
        "",
        f"Generated by `python scripts/validate_l3.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
        f"({platform.machine()}, {platform.python_version()}), engine "
        f"`{loc.name} {loc.version}`.",
        "",
        "Reference: the L3 vertebral body of `example_ct` spans slices 69-79, body centroid slice "
        f"73.72 = patient z {l3h.ref_z():.1f} mm (TotalSegmentator `vertebrae_pp_refined`, test-only). "
        "The localiser reports the slice nearest the midpoint of the L3 endplates. "
        "Slice numbers are indices of each case's own (canonical, inferior-to-superior) grid; the error "
        "is the patient-z distance between the chosen slice and the reference centre. Pass = within "
        "one original slice (3 mm; for 5 mm slices 4 mm, half a slice of quantisation; with a gap across "
        "L3, the nearest existing slice), with the expected flag where an anchor was cropped away or "
        "slices are missing. Cases without L3 must not be found. A result named from weak cues only "
        "(no sacrum, no rib) passes only with confidence < 0.5. The real `hcc_tace_seg_048` row is "
        f"checked against one reader's mid-L3 (z {HCC_MID_L3_Z:.1f} mm, counted from the ribs).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    lines += ["| " + " | ".join(x.replace("|", "/") for x in row) + " |" for row in rows]
    cue_head = [
        "case",
        "sacrum (S1)",
        "lowest rib (T12)",
        "iliac crest (L4)",
        "widest transverse processes (L3)",
    ]
    lines += [
        "",
        "## Each cue's vote",
        "",
        "Where each landmark was found (patient z, mm), the L3 centre its count implies, its weight "
        "(`classical-cues@2`, workers/l3/cues.py) and whether it agrees with the decision. Any "
        "disagreeing cue caps the confidence at 0.45 (0.30 when the two anchors disagree).",
        "",
        "| " + " | ".join([*cue_head, "confidence"]) + " |",
        "|" + "|".join("---" for _ in range(len(cue_head) + 1)) + "|",
    ]
    lines += ["| " + " | ".join(x.replace("|", "/") for x in row) + " |" for row in cue_rows]
    lines += [
        "",
        "Notes:",
        "- Variants of the same CT are not independent patients: this table shows invariance to "
        "resolution, noise, field of view and z sampling, not accuracy across patients.",
        "- `crop 56-100` and the crest-only rows contain L3 but neither the sacrum nor a rib: the "
        "iliac crests and the transverse processes name L3 there, always below 0.5 with "
        "`level_from_weak_cues_only` (review), never as a trusted count.",
        "- `12th ribs shortened`: the 25 mm stubs reach 51-55 mm from the canal, like transverse "
        "processes, and are found as rudimentary ribs by their shape (`anchors.StubRule`, `stub@1`): "
        "they run down 3-6 mm as they go out (axis 14-28 degrees below the horizontal; processes "
        "0-11 degrees and never descending by more than 2 mm), span >= 10 mm of z, and reach >= 8 mm "
        "farther than the processes of the vertebra below. A stub's weight (0.41) stays below 0.5 "
        "alone; with the widest transverse processes agreeing the rib-only crops reach 0.59. Stubs "
        "of 15 mm (reach < 45 mm) are not found: that case is named from the processes alone, for "
        "review. No variant with full ribs and no real transverse process of hcc_tace_seg_048 is "
        "taken for a stub (tests/test_l3_cues.py).",
        "- `hcc_tace_seg_048 at 5 mm`: with its rib heads kept, the ribs still anchor the count (low "
        "confidence: short, one-sided, thick slices). With them cut by the top of the image no rib "
        "is used (its head may lie above) and the transverse processes alone name L3, for review. "
        "The enhancing right kidney joined to contrast-filled bowel is a thin curved plate like an "
        "iliac wing; it is not taken for one because its densest tenth stays at 215 HU while a "
        "wing's cortex reaches 360-510 HU (ILIUM_CORTEX_HU 300, scaled with the scan's bone "
        "brightness). Before that check it was, and L3 was said to lie above the image.",
        "- The DICOM series (T11-T12 only) is recognised as thoracic (rib cage on every slice); "
        "the last rib cannot be followed to its head within 40 mm, so exact levels are not named.",
        "- 7 mm slices are beyond what the method is built for (discs of 5-10 mm blur away). Whatever "
        "the position, the result carries `thick_slices` and a confidence below 0.3, so it goes to "
        "review instead of being trusted (during development this case was sometimes one vertebra "
        "off, always with `anchors_disagree` or `vertebral_level_ambiguous`).",
        "- Contrast, arms, scoliosis and rotation rows are simulations on the same CT (a 350 HU tube "
        "where the aorta lies, arm cylinders with a humerus against the flanks, a lateral shift of "
        "up to 20 mm varying along z, a 10 degree in-plane rotation).",
        "",
        "Speed and memory are measured separately by `python bench/bench_l3.py` (512 x 512 x 500 int16).",
        "",
        "## How the classical localiser works (one paragraph each)",
        "",
        "1. **Work grid.** In-plane block average to ~2.5 mm; thin uniform series binned to >= 1.25 mm "
        "in z; uneven z kept as is. Everything downstream is in millimetres.",
        "2. **Spine track.** The spinal canal is found as CSF/fat density walled by bone in >= 5 of 8 "
        "directions (6-15 mm away), averaged over +-20 mm of z, with a broad midline prior; a sagittal "
        "slab through it is built, the canal is tracked on it by dynamic programming, and the "
        "vertebral column is the bright run directly in front of the canal.",
        "3. **Discs.** 75th percentile HU in a box inside the body on every slice, resampled to 1 mm; "
        "each point is compared with the brightest endplate within +-8 mm (black top-hat); dips are "
        "chained by a second-order dynamic programme (vertebra+disc 20-60 mm, 27-44 mm free, "
        "neighbouring heights within ~13 %).",
        "4. **Anchors.** Sacrum: the top of the run of slices where bone is continuous from the canal to "
        ">= 60 mm on both sides with >= 4 cm2 of bone beyond 40 mm on each side, outside the rib cage; "
        "the L5/S1 disc is the chain disc nearest 5 mm below it. Ribs: thin bars (PCA shape) outside a "
        "30 mm cylinder around the canal whose medial end touches it, reaching >= 75 mm, or shorter "
        "stubs that run down as they go out and reach farther than the processes below them "
        "(rudimentary ribs); the lowest one's neck lies in T12, so the next disc below is T12/L1.",
        "5. **Other cues.** Iliac crests: the top of each iliac wing (a large, thin, lateral bone "
        "plate with cortex running down from its crest, below the ribs); the crest top lies in L4 "
        "or on the L4/L5 disc. "
        "Transverse processes: per vertebra between two chain discs (none rib-bearing, none at the "
        "sacrum), the left-right reach of bone connected to the canal wall (110 HU: thin process tips "
        "are partial-volumed); the widest votes for L3 if it is >= 8 % wider than the next. A bony-ring "
        "check (fraction of 16 rays from the canal meeting bone) flags a chosen slice that is more open "
        "than both of L3's discs: the chain may be shifted half a vertebra onto the discs.",
        "6. **Decision.** Each cue votes for the index of the L3/L4 disc (sacrum: L5/S1 + 2; rib: "
        "T12/L1 - 3; crest: its vertebra is L4; processes: their vertebra is L3). The labelling with "
        "the largest summed weight among those an anchor votes for wins; confidence = 1 - prod(1 - w) "
        "over the agreeing cues (sacrum 0.72, rib 0.55 (x0.75 for a rudimentary stub), crest 0.30, "
        "processes 0.30), capped at 0.45 if "
        "any cue disagrees (`vertebral_level_ambiguous`, the cue named in the notes), 0.30 if the two "
        "anchors disagree (`anchors_disagree`, `possible_transitional_vertebra`), 0.40 without an "
        "anchor. Then multiplied down for implausible heights, faint discs, low contrast, thick "
        "slices, L3 at the edge, gaps. No cue at all: not found (`no_anchor`), never a guess.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")
    # Exit non-zero on any failure that a reviewer would not be warned about.
    n_bad = sum(1 for r in rows if r[-1].startswith("FAIL") and "flagged for review" not in r[-1])
    return 1 if n_bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
