"""``DIR/gallery/index.html``: a static, offline QC gallery to review a cohort in an afternoon.

Why static and offline: the pictures are patient data and the reader may be on a hospital
workstation without internet; one HTML file with its CSS and JavaScript inline (``gallery.css``,
``gallery.js`` beside this module) opened from disk needs no server, no CDN, and its Content
Security Policy forbids any network request. The page shows a tile per study with thumbnails of
the overlay and of the level picture (JPEGs made by :func:`make_thumbnails` in the analysing
process, next to the full PNGs), the numbers and the verdict; ``review`` and low confidence come
first; filters by verdict, QC flag and mark; a click opens the full pictures. The reader marks
tiles ok / wrong level (with the slice to use) / wrong outline, and exports the marks as
``corrections.csv`` for ``bodycomp batch … --corrections``.

The page names studies by their key only (no PatientID, no path), so it can be shared as the
pseudonymised table can. Every value is inserted as text (``textContent``), never as HTML: QC
reasons quote header values.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image

from workers import __version__
from workers.batch.pseudonym import Pseudonymiser
from workers.batch.records import STUDIES
from workers.batch.table import Row, StudyStatus

GALLERY = "gallery"
PICTURES = {"overlay": "l3_overlay.png", "level": "l3_qc.png"}
THUMBNAILS = {"overlay": "thumb_overlay.jpg", "level": "thumb_level.jpg"}
#: Thumbnail width in pixels (a tile is ~340 CSS pixels; 2x for sharp text on high-DPI screens
#: would double the gallery's weight for a picture whose details are one click away).
THUMB_WIDTH = 480
#: Offline by construction: nothing but this file's own script and style, and local pictures.
CSP = (
    "default-src 'none'; img-src 'self' file: data: blob:; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)


def make_thumbnails(folder: Path) -> None:
    """JPEG thumbnails of the study's pictures in ``folder`` (those that exist)."""
    for kind, name in PICTURES.items():
        source = folder / name
        if not source.exists():
            continue
        with Image.open(source) as image:
            picture = image.convert("RGB")
            height = max(1, round(picture.height * THUMB_WIDTH / picture.width))
            picture.thumbnail((THUMB_WIDTH, height), Image.Resampling.LANCZOS)
            picture.save(folder / THUMBNAILS[kind], "JPEG", quality=82, optimize=True)


def _split(text: str | None, separator: str) -> list[str]:
    return [part for part in (text or "").split(separator) if part]


def verdict(row: Row) -> str:
    """What the reader filters on: the QC verdict of a measured study, else the study's status."""
    return row.qc_status if row.status == StudyStatus.DONE and row.qc_status else row.status


def tile(row: Row, out: Path) -> dict[str, Any]:
    """The data of one tile (pictures as paths relative to the gallery folder)."""
    folder = out / STUDIES / row.study_key
    pictures: dict[str, str | None] = {}
    for kind in PICTURES:
        full, thumb = folder / PICTURES[kind], folder / THUMBNAILS[kind]
        relative = f"../{STUDIES}/{row.study_key}/"
        pictures[kind] = relative + PICTURES[kind] if full.exists() else None
        pictures[f"{kind}_thumb"] = (
            relative + (THUMBNAILS[kind] if thumb.exists() else PICTURES[kind]) if full.exists() else None
        )
    data = {
        name: getattr(row, name)
        for name in (
            "study_key",
            "status",
            "error",
            "source_kind",
            "l3_slice_index",
            "l3_z_mm",
            "l3_confidence",
            "l3_method",
            "l3_manual",
            "l3_not_found_reason",
            "sm_area_cm2",
            "sm_mean_hu",
            "imat_area_cm2",
            "vat_area_cm2",
            "sat_area_cm2",
            "smi_cm2_m2",
            "bmi_kg_m2",
            "lsmm",
            "lsmm_status",
            "myosteatosis",
            "smi_missing_reason",
            "reader_mark",
            "reader_slice_index",
        )
    }
    data.update(
        verdict=verdict(row),
        flags=_split(row.qc_flags, ";"),
        reasons=_split(row.qc_reasons, " | "),
        levels_seen=_split(row.levels_seen, ";"),
        pictures=pictures,
    )
    return data


def _asset(name: str) -> str:
    return resources.files("workers.batch").joinpath(name).read_text(encoding="utf-8")


def _script_json(data: Any) -> str:
    """JSON safe inside a ``<script>`` element (no ``</script>`` or ``<!--`` can end it)."""
    text = json.dumps(data, separators=(",", ":"), default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(rows: list[Row], out: Path, keys: Pseudonymiser) -> str:
    """The gallery page."""
    page = {
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "bodycomp_version": __version__,
        # marks in progress survive a reload (localStorage), per output folder
        "gallery_id": keys.pseudonym("gallery", "1"),
        "tiles": [tile(row, out) for row in rows],
    }
    title = f"bodycomp QC gallery: {len(rows)} studies"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{_asset('gallery.css')}</style>\n</head>\n<body>\n"
        f"{_asset('gallery.html')}"
        f'<script type="application/json" id="gallery-data">{_script_json(page)}</script>\n'
        f"<script>\n{_asset('gallery.js')}</script>\n</body>\n</html>\n"
    )


def write_gallery(out: Path, rows: list[Row], keys: Pseudonymiser) -> Path:
    """Write ``DIR/gallery/index.html`` (atomically, mode 0600); return its path."""
    folder = out / GALLERY
    folder.mkdir(mode=0o700, exist_ok=True)
    target = folder / "index.html"
    tmp = folder / "index.html.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8") as handle:
        handle.write(render(rows, out, keys))
    tmp.replace(target)
    return target


__all__ = ["make_thumbnails", "render", "tile", "verdict", "write_gallery"]
