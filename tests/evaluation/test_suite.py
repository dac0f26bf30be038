"""`depotwatch eval suite`: the split, the goals and a two-case run through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from compare_builders import state, truth

from services.evaluation.cli import evaluate
from services.evaluation.suite import CaseResult, aggregate, cases, count_failures

REPO = Path(__file__).resolve().parents[2]


def test_dev_and_validation_use_disjoint_depots_and_enough_cases() -> None:
    dev, validation = cases("dev"), cases("validation")
    assert len(validation) >= 40
    assert len({c.depot_seed for c in validation if c.depot_seed is not None}) >= 10
    assert abs(len(dev) - len(validation)) <= 8
    dev_depots = {c.depot_seed for c in dev if c.depot_seed is not None}
    assert dev_depots.isdisjoint({c.depot_seed for c in validation})
    assert {c.name for c in dev}.isdisjoint({c.name for c in validation})
    extra = cases("extra")
    assert len(extra) >= 40
    extra_depots = {c.depot_seed for c in extra}
    assert extra_depots.isdisjoint(dev_depots | {c.depot_seed for c in validation})
    extra2 = cases("extra2")
    assert len(extra2) >= 40
    assert {c.depot_seed for c in extra2}.isdisjoint(
        dev_depots | extra_depots | {c.depot_seed for c in validation}
    )
    assert {"test-busy-9701", "test-busy-9702"} <= {c.name for c in cases("all")}


def _result(name: str, count: float, wrong: float) -> CaseResult:
    return CaseResult(name, 3, 8, 6, count, 0.1, 0.4, 1 - wrong, 0.0, wrong, 1.0, 0, 0.9, 0.8, 0.5)


def test_a_goal_is_missed_when_the_worst_case_misses_it() -> None:
    lines, met = aggregate([_result("a", 1.0, 0.0), _result("b", 0.98, 0.0)])
    count_line = next(x for x in lines if x.startswith("count per track"))
    assert "worst   98.00% (b)" in count_line
    assert count_line.endswith("MISS")
    assert not met
    lines, met = aggregate([_result("a", 1.0, 0.0), _result("b", 0.995, 0.001)])
    assert met
    assert next(x for x in lines if x.startswith("head/tail median")).endswith("met")


@pytest.mark.slow
def test_suite_runs_two_cases_and_prints_a_row_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(evaluate, ["suite", "--cases", "2", "--jobs", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("case")
    assert lines[1].startswith("test-busy-9801")
    assert "-- 2 cases (validation)" in result.output
    assert any(x.startswith("wrong plate <= 0.5%") for x in lines)


@pytest.mark.timeout(60)
def test_suite_outside_the_repository_says_so_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # the shipped-depot cases read ./facility.yaml
    result = CliRunner().invoke(evaluate, ["suite", "--set", "dev", "--cases", "2", "--jobs", "2"])
    assert result.exit_code == 1, result.output
    assert "facility.yaml: file not found" in result.output
    assert "run from the repository root" in result.output


def test_wrong_counts_are_listed_as_intervals_per_track() -> None:
    lengths = {"T1": 60.0, "T2": 60.0, "T3": 60.0}
    truths, snaps = [], []
    for s in range(0, 20):
        truths.append(truth(s, ("T1", 5.0, 22.0, "TEM2-0001")))
        extra = [(30.0, 47.0, None)] if 12 <= s < 16 else []  # a phantom for 4 s
        snaps.append(state(s, "prod", T1=[(5.1, 22.1, "TEM2-0001"), *extra]))
    seen = [frozenset({"x0"})] * len(truths)
    lines = count_failures(truths, seen, snaps, lengths, warmup_s=2.0)
    assert lines == [
        "T1 12.0-15.0 s: truth 1 [5.0..22.0 TEM2-0001], state 2 [5.1..22.1 TEM2-0001 30.0..47.0]"
    ]
    assert count_failures(truths, seen, snaps[:10], lengths, warmup_s=2.0) == []
