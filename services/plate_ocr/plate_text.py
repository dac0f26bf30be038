"""Plate text normalisation against the fleet's plate patterns (pure).

OCR engines confuse look-alike glyphs (O/0, I/1, S/5, B/8 ...), read dashes as other dash-like
marks, drop or add spaces, and pick up the panel border as a stray ``|`` or ``I``. The raw text
is normalised by the smallest number of such corrections that makes it match exactly one
model's ``plate_pattern``; if none or several models match equally well, the text is not
guessed at.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from schemas.facility import LocomotiveModel

DASHES = "-‐‑‒–—―−_~=.,:"
"""Marks OCR returns for the plate's dash."""

LOOK_ALIKES: dict[str, str] = {
    "O": "0D",
    "0": "OD",
    "D": "0O",
    "Q": "0O",
    "U": "0",
    "I": "1L",
    "L": "1I",
    "1": "IL",
    "|": "1I",
    "!": "1",
    "J": "1",
    "T": "7",
    "7": "T",
    "S": "5",
    "5": "S",
    "B": "8",
    "8": "B",
    "Z": "2",
    "2": "Z",
    "G": "6",
    "6": "G",
    "A": "4",
    "4": "A",
    "E": "3",
    "3": "E",
}
"""Characters OCR confuses, each with what it may really be (upper case)."""

BORDER_MARKS = "|!Il1[]()"
"""Characters the plate panel's dark border is read as, at either end of the text."""

MAX_CORRECTIONS = 3
"""More corrections than this and the reading is treated as unreadable rather than fixed."""

_REGEX_META = set("\\.[](){}*+?|^$")


@dataclass(frozen=True)
class PlateReading:
    """A plate text that matches a fleet pattern, and how much it had to be corrected."""

    text: str
    model: str
    corrections: int


@dataclass(frozen=True)
class PlateRejection:
    """Why a raw OCR text is not a plate of the fleet."""

    reason: str


def literal_prefix(pattern: str) -> str:
    """The fixed text a plate pattern starts with (e.g. ``ChME3-`` of ``^ChME3-\\d{4}$``)."""
    out = []
    for ch in pattern.removeprefix("^"):
        if ch in _REGEX_META:
            break
        out.append(ch)
    return "".join(out)


def clean(raw: str) -> str:
    """Upper case, one kind of dash, no spaces, no stray marks at the ends."""
    text = raw.strip().upper()
    text = "".join("-" if ch in DASHES else ch for ch in text)
    text = re.sub(r"\s+", "", text)
    text = re.sub(r"-{2,}", "-", text)
    return text.strip("-'\"`*#()[]{}<>")


def _variants(text: str) -> Iterator[tuple[str, int]]:
    """Edits of ``text`` that fix OCR slips, each with its cost (number of edits)."""
    yield text, 0
    # The panel border read as a character at either end (never a real digit or letter:
    # dropping one of those would turn a misread into a confident wrong plate).
    head, tail = (
        len(text) > 1 and text[0] in BORDER_MARKS,
        len(text) > 1 and text[-1] in BORDER_MARKS,
    )
    if head:
        yield text[1:], 1
    if tail:
        yield text[:-1], 1
    if head and tail and len(text) > 2:
        yield text[1:-1], 2
    # A dash the engine dropped.
    if "-" not in text:
        for i in range(1, len(text)):
            yield text[:i] + "-" + text[i:], 1


def _substitutions(text: str, budget: int) -> Iterator[tuple[str, int]]:
    """Texts reachable by replacing up to ``budget`` look-alike characters, cheapest first."""
    positions = [i for i, ch in enumerate(text) if ch in LOOK_ALIKES]
    for k in range(budget + 1):
        for chosen in itertools.combinations(positions, k):
            for repl in itertools.product(*(LOOK_ALIKES[text[i]] for i in chosen)):
                chars = list(text)
                for i, r in zip(chosen, repl, strict=True):
                    chars[i] = r
                yield "".join(chars), k


class PlateNormaliser:
    """Matches OCR text against the fleet's plate patterns with look-alike corrections."""

    def __init__(self, models: Sequence[LocomotiveModel]) -> None:
        self.models = list(models)
        # Patterns are matched case-insensitively (OCR case is unreliable); the canonical case
        # is restored from the pattern's literal prefix, e.g. CHME3 -> ChME3.
        self._patterns = [(m, re.compile(m.plate_pattern, re.IGNORECASE)) for m in self.models]

    def _matches(self, text: str) -> list[LocomotiveModel]:
        return [m for m, p in self._patterns if p.fullmatch(text)]

    def canonical(self, text: str, model: LocomotiveModel) -> str:
        """``text`` with the model's series written as in its pattern."""
        prefix = literal_prefix(model.plate_pattern)
        if prefix and text.upper().startswith(prefix.upper()):
            return prefix + text[len(prefix) :]
        return text

    def normalise(self, raw: str) -> PlateReading | PlateRejection:
        """The fleet plate ``raw`` most plausibly is, or why it cannot be decided."""
        text = clean(raw)
        if not text:
            return PlateRejection("no text recognised on the plate")
        found: dict[str, tuple[str, int]] = {}
        best = MAX_CORRECTIONS + 1
        for variant, cost in _variants(text):
            if cost > best:
                continue
            for candidate, subs in _substitutions(variant, min(MAX_CORRECTIONS, best) - cost):
                total = cost + subs
                if total > best:
                    break
                for model in self._matches(candidate):
                    plate = self.canonical(candidate, model)
                    if total < best:
                        best, found = total, {}
                    found.setdefault(plate, (model.name, total))
        if not found:
            return PlateRejection(f"text {raw!r} matches no plate pattern of the fleet")
        if len(found) > 1:
            options = ", ".join(sorted(found))
            return PlateRejection(f"text {raw!r} is ambiguous ({options})")
        ((plate, (model_name, corrections)),) = found.items()
        return PlateReading(text=plate, model=model_name, corrections=corrections)
