"""Plate text normalisation against the example fleet's plate patterns."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.facility import LocomotiveModel, load_facility
from services.plate_ocr.plate_text import (
    PlateNormaliser,
    PlateReading,
    PlateRejection,
    clean,
    literal_prefix,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def normaliser() -> PlateNormaliser:
    return PlateNormaliser(load_facility(ROOT / "facility.yaml").locomotive_models)


@pytest.mark.parametrize(
    ("raw", "plate", "model", "corrections"),
    [
        ("TEM2-5948", "TEM2-5948", "TEM2", 0),
        ("TEM2–5948", "TEM2-5948", "TEM2", 0),  # en dash
        ("TEM2 _ 5948", "TEM2-5948", "TEM2", 0),  # underscore and spaces
        ("tem2-5948", "TEM2-5948", "TEM2", 0),
        ("CHME3-1234", "ChME3-1234", "ChME3", 0),  # the series' own case is restored
        ("TEMZ-5948", "TEM2-5948", "TEM2", 1),  # Z/2
        ("TEM2-S948", "TEM2-5948", "TEM2", 1),  # S/5
        ("TE33A-B0O1", "TE33A-8001", "TE33A", 2),  # B/8, O/0
        ("2TEl16-1234", "2TE116-1234", "2TE116", 1),  # l/1
        ("ZTE116-I234", "2TE116-1234", "2TE116", 2),
        ("TEM25948", "TEM2-5948", "TEM2", 1),  # dash dropped
        ("|TE33A-1234|", "TE33A-1234", "TE33A", 2),  # panel border read at both ends
        ("TEM2-5948I", "TEM2-5948", "TEM2", 1),
    ],
)
def test_readings_are_corrected_to_the_fleet_pattern(
    normaliser: PlateNormaliser, raw: str, plate: str, model: str, corrections: int
) -> None:
    assert normaliser.normalise(raw) == PlateReading(plate, model, corrections)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("", "no text"),
        ("A-9745", "matches no plate pattern"),  # plate cut off by the image edge
        ("TE33A-12345", "matches no plate pattern"),  # an extra digit is not dropped: no guess
        ("TE33A-123", "matches no plate pattern"),
        ("XXXX-1234", "matches no plate pattern"),
        ("T?M2-5?48", "matches no plate pattern"),
    ],
)
def test_unmatched_text_is_not_guessed(normaliser: PlateNormaliser, raw: str, why: str) -> None:
    result = normaliser.normalise(raw)
    assert isinstance(result, PlateRejection)
    assert why in result.reason


def test_equally_good_readings_of_two_plates_are_ambiguous() -> None:
    models = [
        LocomotiveModel(name="A", length_m=17, plate_pattern=r"^AB-\d{2}$"),
        LocomotiveModel(name="B", length_m=17, plate_pattern=r"^A8-\d{2}$"),
    ]
    result = PlateNormaliser(models).normalise("AB-12")
    assert result == PlateReading("AB-12", "A", 0)  # exact beats a correction
    result = PlateNormaliser(models).normalise("A3-12")  # 3 -> B? 3 -> 8? neither is a look-alike
    assert isinstance(result, PlateRejection)
    two = [
        LocomotiveModel(name="A", length_m=17, plate_pattern=r"^X0-\d$"),
        LocomotiveModel(name="B", length_m=17, plate_pattern=r"^XD-\d$"),
    ]
    result = PlateNormaliser(two).normalise("XO-1")
    assert isinstance(result, PlateRejection)
    assert "ambiguous" in result.reason


def test_literal_prefix_and_clean() -> None:
    assert literal_prefix(r"^ChME3-\d{4}$") == "ChME3-"
    assert literal_prefix(r"^2TE116-\d{4}$") == "2TE116-"
    assert literal_prefix(r"\d+") == ""
    assert clean("  te33a — 0012 ") == "TE33A-0012"
