"""Plates and models as evidence accumulated per locomotive, and what the state shows.

Every reading counts (no sliding window): a plate read right 111 times and wrong twice stays
right. A plate is shown only when enough readings name it and it holds most of the evidence;
otherwise the state says "unknown" rather than risk a wrong plate. A plate once established
stays with the locomotive while it is tracked, through moves and occlusion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from services.state_estimator.fusion.config import FusionConfig
from services.state_estimator.fusion.state import PlateVote, TrackedLocomotive

IdentityStatus = Literal["identified", "model_only", "unidentified"]

MAX_PLATES = 6
"""Distinct plate texts kept per locomotive (misreads are few; the weakest falls off)."""


@dataclass(frozen=True)
class Identity:
    """What the state shows about who a locomotive is."""

    model: str | None
    plate: str | None

    @property
    def status(self) -> IdentityStatus:
        """identified (plate and model), model_only, or unidentified."""
        if self.plate is not None and self.model is not None:
            return "identified"
        return "model_only" if self.model is not None else "unidentified"


def vote_model(config: FusionConfig, vote: PlateVote) -> str | None:
    """The model a reading names: its model, else the model whose pattern its plate fits."""
    if vote.model:
        return vote.model
    if vote.plate:
        return plate_model(config, vote.plate)
    return None


def plate_model(config: FusionConfig, plate: str) -> str | None:
    """The model whose plate pattern ``plate`` fits (None: none or several)."""
    fits = [name for name, pattern in config.plate_res.items() if pattern.fullmatch(plate)]
    return fits[0] if len(fits) == 1 else None


def add_vote(loco: TrackedLocomotive, vote: PlateVote) -> None:
    """Fold one reading into a locomotive's evidence."""
    if vote.plate:
        loco.plates[vote.plate] = loco.plates.get(vote.plate, 0.0) + vote.plate_confidence
        if len(loco.plates) > MAX_PLATES:
            weakest = min(loco.plates, key=lambda p: (loco.plates[p], p))
            del loco.plates[weakest]
    if vote.model:
        loco.models[vote.model] = loco.models.get(vote.model, 0.0) + vote.model_confidence


def dominant(evidence: dict[str, float], minimum: float, share: float) -> str | None:
    """The key holding at least ``minimum`` and ``share`` of all the evidence, if one does."""
    if not evidence:
        return None
    best = max(sorted(evidence), key=lambda k: evidence[k])
    total = sum(evidence.values())
    if evidence[best] >= minimum and evidence[best] >= share * total:
        return best
    return None


def _shown_plate(config: FusionConfig, loco: TrackedLocomotive) -> str | None:
    t = config.tuning
    return dominant(loco.plates, t.plate_min_evidence, t.plate_dominance)


def recognised_model(config: FusionConfig, loco: TrackedLocomotive) -> str | None:
    """The model most of ``loco``'s readings name (plate patterns and livery alike), by the same
    dominance as plates; None when no known model dominates."""
    model = dominant(loco.models, 0.0, config.tuning.plate_dominance)
    return model if model in config.model_lengths else None


def _plate_and_model(
    config: FusionConfig, loco: TrackedLocomotive
) -> tuple[str | None, str | None]:
    """(plate, model) the readings name. A plate whose model most readings contradict is not
    shown: it is a neighbour's plate (read beside a cab-to-cab coupling) or a misread, and the
    model the readings name stands."""
    plate = _shown_plate(config, loco)
    recognised = recognised_model(config, loco)
    named = plate_model(config, plate) if plate is not None else None
    if named is not None and recognised is not None and named != recognised:
        return None, recognised
    return plate, named or recognised


def read_model(config: FusionConfig, loco: TrackedLocomotive) -> str | None:
    """The model readings name (plate pattern or model recognition), not guessed from length."""
    return _plate_and_model(config, loco)[1]


def identity_of(config: FusionConfig, loco: TrackedLocomotive) -> Identity:
    """The model and plate the state shows for ``loco`` (None where unsure)."""
    t = config.tuning
    plate, model = _plate_and_model(config, loco)
    if model is None and loco.head_seen_at is not None and loco.tail_seen_at is not None:
        fits = [
            name
            for name, length in config.model_lengths.items()
            if abs(length - loco.length_m) <= t.length_fit_m
        ]
        model = fits[0] if len(fits) == 1 else None
    return Identity(model=model, plate=plate)


def shown_identities(
    config: FusionConfig, locomotives: list[TrackedLocomotive]
) -> dict[str, Identity]:
    """What the state shows for each locomotive (by id). A plate names one locomotive: where
    several would show it, the one with the most evidence for it does; on a tie none does."""
    shown = {loco.locomotive_id: identity_of(config, loco) for loco in locomotives}
    holders: dict[str, list[tuple[float, str]]] = {}
    for loco in locomotives:
        if (plate := shown[loco.locomotive_id].plate) is not None:
            holders.setdefault(plate, []).append((loco.plates.get(plate, 0.0), loco.locomotive_id))
    for ranked in holders.values():
        if len(ranked) < 2:
            continue
        ranked.sort(reverse=True)
        keeper = ranked[0][1] if ranked[0][0] > ranked[1][0] else None
        for _, loco_id in ranked:
            if loco_id != keeper:
                who = shown[loco_id]
                shown[loco_id] = Identity(model=who.model, plate=None)
    return shown


def cab_known(loco: TrackedLocomotive) -> bool:
    """Whether the cab's place is evidence, not an assumption: its head was detected, or it
    was placed from its plate (neither end seen)."""
    return loco.head_seen_at is not None or loco.tail_seen_at is None


def cab_plate_m(
    config: FusionConfig, loco: TrackedLocomotive, head_m: float | None = None
) -> float:
    """Where ``loco``'s plate hangs: ``plate_inset_m`` inside its cab (at ``head_m``, by
    default where its head is)."""
    head = loco.head_m if head_m is None else head_m
    return head + loco.direction * config.tuning.plate_inset_m


def reading_owner(
    config: FusionConfig, locomotives: list[TrackedLocomotive], vote: PlateVote
) -> TrackedLocomotive | None:
    """The locomotive a reading belongs to (see :func:`owner_at`), unless it names another
    plate than the one that locomotive shows and was read beyond its body (see
    :func:`foreign_plate`)."""
    owner = owner_at(config, locomotives, vote.track_id, vote.position_m)
    if owner is not None and foreign_plate(config, owner, vote.plate, vote.position_m):
        return None
    return owner


def foreign_plate(
    config: FusionConfig, loco: TrackedLocomotive, plate: str | None, position_m: float
) -> bool:
    """Whether a reading of ``plate`` at ``position_m`` is the cab of a neighbour coupled cab
    to cab with ``loco``: read beyond ``loco``'s body (its own plate hangs inside its cab) and
    naming another plate than the one ``loco`` holds most evidence for. gen-d110-s3: two
    ChME3s coupled cab to cab, both ends hidden, plates read 2 m apart; the second plate's
    readings went to the first locomotive (within the plate margin of its cab), which then
    showed no plate, and the second locomotive was never started."""
    if plate is None or not loco.plates:
        return False
    lo, hi = loco.span
    if lo <= position_m <= hi:
        return False
    top = max(sorted(loco.plates), key=lambda p: loco.plates[p])
    return plate != top and loco.plates.get(plate, 0.0) < loco.plates[top]


def owner_at(
    config: FusionConfig, locomotives: list[TrackedLocomotive], track_id: str, position_m: float
) -> TrackedLocomotive | None:
    """The locomotive whose plate a reading at ``position_m`` is: on its track, the one whose
    cab stands about ``plate_inset_m`` from the reading, among those whose body (with margin)
    holds it. A plate hangs at the cab: where a locomotive's cab is known (its head seen, or
    it was placed from its plate), a reading more than ``plate_margin_m`` from that cab is not
    its plate but a neighbour's, coupled to it or standing where its assumed body reaches."""
    t = config.tuning
    best: tuple[float, TrackedLocomotive] | None = None
    for loco in locomotives:
        if loco.track_id != track_id:
            continue
        lo, hi = loco.span
        if not lo - t.plate_margin_m <= position_m <= hi + t.plate_margin_m:
            continue
        score = abs(cab_plate_m(config, loco) - position_m)
        if cab_known(loco) and score > t.plate_margin_m:
            continue
        if best is None or score < best[0]:
            best = (score, loco)
    return best[1] if best is not None else None
