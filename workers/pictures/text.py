"""Text on the product's pictures (overlay, level picture): the font, and what it can draw.

Why: Pillow's built-in font, the only one that needs no file on the node, lacks the en and em
dash, superscripts and the comparison signs that the QC reasons use ("saw T12–L2", "cm²",
"≥ 3"); it draws a box for each. The reasons keep their characters in result.json and the SR;
on a picture they are written with the nearest plain characters.
"""

from __future__ import annotations

from PIL import ImageFont

#: characters the built-in font draws as a box, and what is drawn instead
PLAIN = str.maketrans(
    {"–": "-", "—": "-", "²": "2", "³": "3", "≥": ">=", "≤": "<=", "×": "x", "→": "->", "µ": "u"}
)


def default_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` pixels (a fixed bitmap font on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow without sized default font
        return ImageFont.load_default()


def drawable(text: str) -> str:
    """``text`` with the characters the built-in font cannot draw replaced (see :data:`PLAIN`)."""
    return text.translate(PLAIN)
