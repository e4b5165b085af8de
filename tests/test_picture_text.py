"""Text on the pictures: what Pillow's built-in font cannot draw is written plainly."""

from __future__ import annotations

from workers.pictures.overlay import qc_lines
from workers.pictures.text import PLAIN, default_font, drawable


def _ink(text: str) -> bytes:
    return bytes(default_font(14).getmask(text))


def test_the_replaced_characters_are_the_ones_the_font_draws_as_a_box() -> None:
    box = _ink("\uffff")  # a code point no font has: the font's "missing glyph" box
    for code, plain in PLAIN.items():
        assert _ink(chr(code)) == box, chr(code)
        assert all(_ink(ch) != box for ch in str(plain)), plain


def test_qc_reasons_on_the_overlay_are_drawable() -> None:
    reason = "L3 is not in the field of view (it lies below it): saw T12–L2; SAT ≥ 3 cm²"
    assert drawable(reason) == "L3 is not in the field of view (it lies below it): saw T12-L2; SAT >= 3 cm2"
    lines = qc_lines([reason])
    assert lines and not any(chr(code) in "".join(lines) for code in PLAIN)
