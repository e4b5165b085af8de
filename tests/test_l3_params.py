"""workers/l3/params.py: the L3 decision's tuned numbers, each with a note (issue #22)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from workers.l3 import params


def test_every_number_of_the_l3_table_has_a_reason() -> None:
    """Each field of each section carries a ``#:`` note on the line above it (as in
    workers/tissues/params.py), and the table names its version."""
    source = Path(params.__file__).read_text().splitlines()
    sections = [f for f in dataclasses.fields(params.L3Params) if f.name != "name"]
    expected = {"chain", "confidence", "ribs", "spine", "discs", "posterior", "sacrum", "crests"}
    assert {f.name for f in sections} == expected
    for sec in sections:
        section_type = sec.type if isinstance(sec.type, type) else getattr(params, str(sec.type))
        for fld in dataclasses.fields(section_type):
            line = next(i for i, s in enumerate(source) if re.match(rf"\s+{fld.name}: ", s))
            assert source[line - 1].strip().startswith("#:"), f"{sec.name}.{fld.name} has no note"
    assert re.fullmatch(r"classical-l3@\d+", params.L3_PARAMS.name)


def test_confidence_factors_lower_the_confidence() -> None:
    """Every confidence factor lies in (0, 1): a doubt never raises the confidence."""
    conf = params.L3_PARAMS.confidence
    factors = {f.name: getattr(conf, f.name) for f in dataclasses.fields(conf) if f.name.endswith("_factor")}
    assert len(factors) == 8
    assert all(0.0 < v < 1.0 for v in factors.values()), factors
    lo, hi = conf.confidence_range
    assert 0.0 < lo < hi < 1.0
