"""Errors the analysis raises, each with the exit code the command-line interface uses.

The CLI contract (issue #3/#4): 0 success (also when flagged for review), 2 bad input,
3 the anatomy needed is not in the field of view. Errors carry one clear line of text
that names what is wrong and where, never patient names or IDs.
"""

from __future__ import annotations


class BodycompError(Exception):
    """Base class of every error bodycomp reports to a user."""

    exit_code: int = 1


class InputError(BodycompError):
    """The input cannot be analysed: not DICOM/NIfTI, no CT series, corrupt pixel data, ..."""

    exit_code = 2


class NoSeriesError(InputError):
    """Files were read, but no series passes the selection rules."""


class GeometryError(InputError):
    """A series whose slice geometry cannot be turned into a trustworthy volume."""


class PixelDataError(InputError):
    """Pixel data that is missing, truncated or undecodable."""


class UnknownNameError(InputError, KeyError):
    """A preset, rule set or engine name nobody registered (a KeyError too, for mapping lookups)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NotInFieldOfViewError(BodycompError):
    """The structure to measure (L3) is not covered by the scan."""

    exit_code = 3
