"""L3 localisation: find the middle of the third lumbar vertebra on an abdominal CT.

Plain library (no Celery, no network, no DICOM): give it a canonical HU volume, get an L3Result.

    from workers.l3 import get_localiser
    result = get_localiser().locate(hu, z_mm, spacing_yx_mm)
"""

from workers.l3.engine import L3Localiser, available_localisers, get_localiser, register_localiser
from workers.l3.result import L3Result

__all__ = ["L3Localiser", "L3Result", "available_localisers", "get_localiser", "register_localiser"]
