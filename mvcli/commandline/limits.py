"""Argument limits beyond jsonargparse's own (``PositiveInt``, ``NonNegativeFloat``, ...).

Typed ``__init__`` arguments with these types are checked while the command line and the
config files are parsed (before any data is read) and show the limit in ``--help``.
"""

from __future__ import annotations

from jsonargparse.typing import restricted_number_type

__all__ = ["AtLeastOne", "StepLimit", "UnitIntervalClosedOpen", "UnitIntervalOpenLeft"]

UnitIntervalClosedOpen = restricted_number_type(
    "UnitIntervalClosedOpen", float, [(">=", 0.0), ("<", 1.0)], docstring="in [0, 1)"
)
UnitIntervalOpenLeft = restricted_number_type(
    "UnitIntervalOpenLeft", float, [(">", 0.0), ("<=", 1.0)], docstring="in (0, 1]"
)
AtLeastOne = restricted_number_type("AtLeastOne", float, [(">=", 1.0)], docstring=">= 1")
# A count of steps where -1 means "no limit".
StepLimit = restricted_number_type("StepLimit", int, [(">=", -1)], docstring=">= -1 (-1: none)")
