"""Scored units from structure-safe text units, with the anchors each must be kept with (transitively closed)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .spans import Unit, units_from_char_ranges
from .text_units import TextUnit


def anchored_units(
    text_units: Sequence[TextUnit], token_ends: list[int], keep_scores: np.ndarray
) -> tuple[list[Unit], list[tuple[int, ...]]]:
    """Units for :func:`~cprs_core.text_units.segment`'s text units (those holding no token are left out), and for
    each the positions of all units it must be kept with (its anchors, their anchors, ...)."""
    units = units_from_char_ranges([(unit.start, unit.end) for unit in text_units], token_ends, keep_scores)
    position = {(unit.char_start, unit.char_end): unit.index for unit in units}
    direct = {
        position[(text_unit.start, text_unit.end)]: [
            position[key] for anchor in text_unit.anchors
            if (key := (text_units[anchor].start, text_units[anchor].end)) in position
        ]
        for text_unit in text_units
        if (text_unit.start, text_unit.end) in position
    }
    closed: list[tuple[int, ...]] = []
    for index in range(len(units)):
        seen: dict[int, None] = {}
        stack = list(direct.get(index, ()))
        while stack:
            anchor = stack.pop()
            if anchor not in seen:
                seen[anchor] = None
                stack.extend(direct.get(anchor, ()))
        closed.append(tuple(seen))
    return units, closed


def with_anchors(kept: Sequence[Unit], units: Sequence[Unit], anchors: Sequence[Sequence[int]]) -> list[Unit]:
    """``kept`` plus every unit anchored by a kept one, in order."""
    positions = {unit.index for unit in kept}
    positions.update(anchor for unit in kept for anchor in anchors[unit.index])
    return [units[position] for position in sorted(positions)]
