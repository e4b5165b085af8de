"""HL7 v2 over MLLP: heights and weights in (:mod:`.listener`, :mod:`.messages`), results out as
ORU^R01 (:mod:`.oru`, :mod:`.sender`). Message contents are patient data: only control IDs,
message types and reasons are logged."""
