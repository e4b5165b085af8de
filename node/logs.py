"""The service log, set up the same way in every process of the node (the node, its receiving
processes, ``bodycomp batch``'s analysing processes).

Why a module of its own: it lived in :mod:`node.operate.cli`, so a receiving process and the cohort runner
imported the command line (and through it the whole node) to get a log format.
"""

from __future__ import annotations

import logging

from node import privacy


def configure_logging(verbose: bool = False) -> None:
    """The service log: format, levels, redaction."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # highdicom logs one INFO line per attribute module it copies: noise in a service log.
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    # Library messages that quote dataset values (a birth date, a name) never reach a log.
    privacy.install()
