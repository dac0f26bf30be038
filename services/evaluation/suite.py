"""``depotwatch eval suite``: the fusion core on many depots and scenarios (generalisation).

A case is a (depot, scenario, seed): a generated depot (``services.simulator.generated_depot``)
with its generated scenario, or the shipped facility with a built-in test scenario. The split
is fixed: the dev set (tune on it) and the validation set (report it) use disjoint generated
depot seeds and disjoint scenario seeds on the shipped facility; the extra set is a second
tuning pool of other generated depots (failures the dev set no longer shows). Each case runs
the modelled detector (occlusion, edge cut-off, misses, misreads, lag) through the fusion core
and is scored against the locomotives observable so far (``fusion_eval``). Cases are independent:
``--jobs`` runs them in worker processes.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import click

from schemas.facility import ConfigError, FacilityConfig, load_facility
from schemas.facility_state import FacilityState
from schemas.ground_truth import GroundTruth
from services.evaluation.compare import (
    Placed,
    pair_in_time,
    placed_counts_agree,
    placed_from_state,
    placed_from_truth,
    with_inside,
)
from services.evaluation.fusion_eval import DetectorModel, fuse, fuse_and_score, modelled_run
from services.evaluation.tracking import Span, TrackingFrame, hota, idf1

SetName = Literal["dev", "extra", "extra2", "validation"]
WARMUP_S = 10.0
FPS = 2.0


@dataclass(frozen=True)
class Case:
    """One named evaluation case."""

    name: str
    split: SetName
    scenario: str
    """Built-in scenario name on the shipped facility, or "generated"."""
    seed: int
    depot_seed: int | None = None


def _generated(split: SetName, depots: range, seeds: Sequence[int]) -> list[Case]:
    return [Case(f"gen-d{d}-s{s}", split, "generated", s, d) for d in depots for s in seeds]


def _shipped(split: SetName, runs: Sequence[tuple[str, int]]) -> list[Case]:
    return [Case(f"{name}-{seed}", split, name, seed) for name, seed in runs]


# The shipped cases that failed before (test-busy 9701, 9702) are in dev: they are the ones
# to debug. Validation depots and seeds are never looked at while tuning.
CASES: tuple[Case, ...] = (
    *_shipped("dev", [("test-busy", 9701), ("test-busy", 9702), ("test-dim", 9703)]),
    *_shipped("dev", [("test-busy", 9704)]),
    *_generated("dev", range(101, 112), (1, 2, 3, 4)),
    # Added on 2026-12-03 (session 28), when most dev cases met the goal: tune on these too.
    *_generated("extra", range(301, 317), (1, 2, 3)),
    # Added on 2026-12-03 (session 30): the fresh pool that found rule 21 (gen-d413-s3 was
    # read while tuning), so a tuning pool too, no longer held out.
    *_generated("extra2", range(401, 417), (1, 2, 3)),
    *_shipped("validation", [("test-busy", 9801), ("test-busy", 9802), ("test-dim", 9803)]),
    *_shipped("validation", [("test-dim", 9804)]),
    *_generated("validation", range(201, 212), (1, 2, 3, 4)),
)


def cases(split: str) -> list[Case]:
    """The cases of a set: dev, extra, extra2, validation or all."""
    return [c for c in CASES if split == "all" or c.split == split]


@dataclass(frozen=True)
class CaseResult:
    """The figures of one case."""

    name: str
    tracks: int
    cameras: int
    locomotives: int
    count_rate: float | None
    median_m: float | None
    p95_m: float | None
    correct: float | None
    unknown: float | None
    wrong: float | None
    identified_when_legible: float | None
    unobservable: int
    idf1: float | None
    hota: float
    cpu_ms_per_estimate: float
    details: tuple[str, ...] = ()


def _spans(
    locos: Sequence[tuple[str, str, float, float]], lengths: dict[str, float]
) -> dict[str, Span]:
    """id -> span clipped to the depot (what lies outside cannot be seen or scored)."""
    out: dict[str, Span] = {}
    for loco_id, track, a, b in locos:
        lo, hi = max(0.0, min(a, b)), min(lengths[track], max(a, b))
        if hi > lo:
            out[loco_id] = (track, lo, hi)
    return out


def tracking_frames(
    truths: Sequence[object],
    observable: Sequence[frozenset[str]],
    snapshots: Sequence[FacilityState],
    lengths: dict[str, float],
    warmup_s: float = WARMUP_S,
) -> list[TrackingFrame]:
    """One frame per truth tick after the warm-up: observable truth and the latest state."""
    frames: list[TrackingFrame] = []
    ordered = sorted(snapshots, key=lambda s: s.as_of)
    j = -1
    gts = [t for t in truths if isinstance(t, GroundTruth)]
    if not gts:
        return frames
    start = gts[0].at + timedelta(seconds=warmup_s)
    for truth, seen in zip(gts, observable, strict=True):
        while j + 1 < len(ordered) and ordered[j + 1].as_of <= truth.at + timedelta(seconds=0.25):
            j += 1
        if truth.at < start:
            continue
        gt = _spans(
            [(x.locomotive_id, x.track_id, x.head_m, x.tail_m) for x in truth.locomotives
             if x.locomotive_id in seen],
            lengths,
        )  # fmt: skip
        state = ordered[j] if j >= 0 else None
        tr = _spans(
            [
                (loco.locomotive_id, t.track_id, loco.head_m, loco.tail_m)
                for t in (state.tracks if state else [])
                for loco in t.locomotives
            ],
            lengths,
        )
        frames.append(TrackingFrame(gt, tr))
    return frames


MAX_EXPLAINED = 12
"""Wrong-count intervals listed per case (the first ones: later ones often follow from them)."""


def _spans_text(placed: Sequence[Placed]) -> str:
    items = sorted((min(p.head_m, p.tail_m), max(p.head_m, p.tail_m), p.plate) for p in placed)
    return " ".join(f"{lo:.1f}..{hi:.1f}" + (f" {p}" if p else "") for lo, hi, p in items)


def count_failures(
    truths: Sequence[GroundTruth],
    observable: Sequence[frozenset[str]],
    snapshots: Sequence[FacilityState],
    lengths: dict[str, float],
    warmup_s: float = WARMUP_S,
) -> list[str]:
    """Where a track's count was wrong: one line per interval (track, seconds after the start,
    truth and state spans at its start), so a failing case can be read, not only scored."""
    if not truths:
        return []
    seen_at = {t.tick: seen for t, seen in zip(truths, observable, strict=True)}
    start = truths[0].at
    open_: dict[str, tuple[float, str]] = {}
    last: dict[str, float] = {}
    closed: list[tuple[float, str, str]] = []

    def close(track: str) -> None:
        began, text = open_.pop(track)
        closed.append((began, track, f"{track} {began:.1f}-{last[track]:.1f} s: {text}"))

    refs = [(t.at, t) for t in truths]
    for truth, state in pair_in_time(refs, sorted(snapshots, key=lambda s: s.as_of), 0.5):
        rel = (truth.at - start).total_seconds()
        if rel < warmup_s:
            continue
        want = placed_from_truth(truth, lengths, seen_at[truth.tick])
        got = with_inside(placed_from_state(state), lengths)
        for track in lengths:
            a = [p for p in want if p.track_id == track]
            b = [p for p in got if p.track_id == track]
            agrees = placed_counts_agree(a, b)
            if not agrees and track not in open_:
                text = f"truth {len(a)} [{_spans_text(a)}], state {len(b)} [{_spans_text(b)}]"
                open_[track] = (rel, text)
            elif agrees and track in open_:
                close(track)
            last[track] = rel
    for track in list(open_):
        close(track)
    out = list(dict.fromkeys(line for _, _, line in sorted(closed)))  # flicker: once each
    if len(out) > MAX_EXPLAINED:
        out = [*out[:MAX_EXPLAINED], f"... {len(out) - MAX_EXPLAINED} more intervals"]
    return out


def case_inputs(case: Case) -> tuple[FacilityConfig, object]:
    if case.depot_seed is None:
        return load_facility("facility.yaml"), case.scenario
    from services.simulator.generated_depot import generate_depot, generate_scenario

    depot = generate_depot(case.depot_seed)
    return depot.facility, generate_scenario(depot, case.seed)


def run_case(case: Case, detector: DetectorModel | None = None) -> CaseResult:
    """Modelled detector -> fusion core -> every figure of one case."""
    facility, scenario = case_inputs(case)
    run = modelled_run(facility, scenario, case.seed, detector or DetectorModel(), fps=FPS)  # type: ignore[arg-type]
    fused = fuse(facility, run.arrivals)
    summary = fuse_and_score(
        facility, run.arrivals, run.truths, warmup_s=WARMUP_S, run=run, snapshots=fused.snapshots
    )
    lengths = {t.id: t.length_m for t in facility.tracks}
    frames = tracking_frames(run.truths, run.observable, fused.snapshots, lengths)
    everyone = {x.locomotive_id for t in run.truths for x in t.locomotives}
    tracked = hota(frames)
    id_f1 = idf1(frames)
    return CaseResult(
        name=case.name,
        tracks=len(facility.tracks),
        cameras=len(facility.cameras),
        locomotives=len(everyone),
        count_rate=summary.count_rate,
        median_m=summary.median_error_m,
        p95_m=summary.p95_error_m,
        correct=summary.identity_rate,
        unknown=summary.unknown_rate,
        wrong=summary.wrong_rate,
        identified_when_legible=summary.identified_when_legible,
        unobservable=len(everyone - run.observable[-1]),
        idf1=id_f1,
        hota=tracked.hota,
        cpu_ms_per_estimate=1000.0 * fused.cpu_s / max(1, fused.estimates),
        details=(
            *summary.lines(),
            f"identified when legible:     {_pct(summary.identified_when_legible)} "
            f"({summary.legible_identified}/{summary.legible_total})",
            f"HOTA {tracked.hota:.3f} (DetA {tracked.det_a:.3f}, AssA {tracked.ass_a:.3f}), "
            f"IDF1 {_num(id_f1)}",
            f"fusion: {fused.estimates} estimates, {fused.cpu_s:.2f} s CPU",
            "count wrong (track, seconds after the start, truth vs state at its start):",
            *(
                f"  {line}"
                for line in count_failures(run.truths, run.observable, fused.snapshots, lengths)
                or ["none"]
            ),
        ),
    )


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


HEADER = (
    f"{'case':24} {'trk':>3} {'cam':>3} {'loco':>4} {'count%':>7} {'med m':>6} {'p95 m':>6} "
    f"{'ok%':>6} {'unk%':>6} {'wrong%':>6} {'legib%':>6} {'unobs':>5} {'IDF1':>6} {'HOTA':>6} "
    f"{'ms/est':>6}"
)


def row(r: CaseResult) -> str:
    """One line of the report."""
    return (
        f"{r.name:24} {r.tracks:3d} {r.cameras:3d} {r.locomotives:4d} {_pct(r.count_rate):>7} "
        f"{_num(r.median_m, 2):>6} {_num(r.p95_m, 2):>6} {_pct(r.correct):>6} "
        f"{_pct(r.unknown):>6} {_pct(r.wrong):>6} {_pct(r.identified_when_legible):>6} "
        f"{r.unobservable:5d} {_num(r.idf1):>6} {_num(r.hota):>6} {r.cpu_ms_per_estimate:6.2f}"
    )


Goal = tuple[str, Callable[[CaseResult], float | None], float, bool, str]
GOALS: tuple[Goal, ...] = (
    ("count per track >= 99% in every case", lambda r: r.count_rate, 0.99, True, "%"),
    ("head/tail median <= 0.3 m", lambda r: r.median_m, 0.3, False, "m"),
    ("head/tail p95 <= 1 m", lambda r: r.p95_m, 1.0, False, "m"),
    ("wrong plate <= 0.5%", lambda r: r.wrong, 0.005, False, "%"),
    ("identified when legible >= 98%", lambda r: r.identified_when_legible, 0.98, True, "%"),
)
"""(what, figure, threshold, higher is better, unit): every case must meet each goal."""


def aggregate(results: Sequence[CaseResult]) -> tuple[list[str], bool]:
    """Mean and worst-case lines, then each goal met/MISS; and whether every goal is met."""
    lines = []
    all_met = True
    for what, figure, threshold, higher, unit_kind in GOALS:
        values = [v for r in results if (v := figure(r)) is not None]
        if not values:
            lines.append(f"{what:40} n/a")
            continue
        worst = min(values) if higher else max(values)
        worst_case = next(r.name for r in results if figure(r) == worst)
        met = worst >= threshold if higher else worst <= threshold
        all_met &= met
        scale, unit = (100.0, "%") if unit_kind == "%" else (1.0, " m")
        lines.append(
            f"{what:40} mean {statistics.fmean(values) * scale:7.2f}{unit}  "
            f"worst {worst * scale:7.2f}{unit} ({worst_case})  {'met' if met else 'MISS'}"
        )
    for label, figure2 in (
        ("IDF1", lambda r: r.idf1),
        ("HOTA", lambda r: r.hota),
    ):
        values = [v for r in results if (v := figure2(r)) is not None]
        if values:
            lines.append(f"{label:40} mean {statistics.fmean(values):.3f}  worst {min(values):.3f}")
    unobservable = sum(r.unobservable for r in results)
    cpu = statistics.fmean(r.cpu_ms_per_estimate for r in results)
    lines.append(f"unobservable locomotives (never seen, not scored): {unobservable}")
    lines.append(f"fusion CPU per estimate: mean {cpu:.2f} ms")
    return lines, all_met


def _run_cases(chosen: list[Case], jobs: int, details: bool) -> list[CaseResult]:
    """Run the cases (in ``jobs`` forked workers), printing a row as each finishes."""
    results: list[CaseResult] = []
    if jobs > 1 and len(chosen) > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            for result in pool.imap(run_case, chosen):
                results.append(result)
                click.echo(row(result))
        return results
    for case in chosen:
        result = run_case(case)
        results.append(result)
        click.echo(row(result))
        if details:
            for line in result.details:
                click.echo(f"  {line}")
    return results


@click.command("suite")
@click.option(
    "--set",
    "split",
    type=click.Choice(["dev", "extra", "extra2", "validation", "all"]),
    default="validation",
    show_default=True,
    help="dev: tune on these; extra, extra2: more tuning pools (48 cases each on 16 other "
    "generated depots); validation: report these (other depots and seeds); all: every set.",
)
@click.option(
    "--detector",
    type=click.Choice(["modelled"]),
    default="modelled",
    show_default=True,
    help="modelled: estimates from ground truth: sigma 0.15 m, 5%% misses, plates read ~50%% "
    "of the time when visible, 2%% misread, lag up to 1 s, occlusion by locomotive bodies.",
)
@click.option("--cases", "limit", type=click.IntRange(1), default=None, help="First N cases only.")
@click.option(
    "--case",
    "one",
    default=None,
    help="Run one named case and print its details, with the first intervals in which a "
    "track's count was wrong (truth and state at its start).",
)
@click.option(
    "--jobs", type=click.IntRange(1, 64), default=1, show_default=True, help="Worker processes."
)
@click.option("--check", is_flag=True, help="Exit 1 when a goal is missed (default: exit 0).")
def suite_command(
    split: str, detector: str, limit: int | None, one: str | None, jobs: int, check: bool
) -> None:
    """Fusion on many depots: generated ones and the shipped one, dev or validation set.

    Prints one row per case (case; depot tracks and cameras; locomotives; count per track
    agrees %; head/tail error median and p95; identity correct / unknown / wrong % of matched
    locomotives; identified % among plates legible so far; locomotives never observable
    (left out of scoring); IDF1; HOTA; fusion CPU ms per estimate), then mean and worst case
    of each figure with every goal marked met or MISS. Count and identity are scored against
    the locomotives some camera has seen so far. Run from the repository root (the shipped
    cases read facility.yaml). A report: exit code 0 unless --check and a goal is missed.
    """
    del detector  # one kind for now; the option names what the figures mean
    chosen = cases(split) if one is None else [c for c in CASES if c.name == one]
    if not chosen:
        names = ", ".join(c.name for c in CASES[:6])
        raise click.UsageError(f"no case {one!r}; names look like {names}, ...")
    if limit is not None:
        chosen = chosen[:limit]
    click.echo(HEADER)
    try:
        results = _run_cases(chosen, jobs, details=one is not None)
    except ConfigError as exc:
        raise click.ClickException(f"{exc} (run from the repository root)") from None
    lines, met = aggregate(results)
    click.echo(f"-- {len(results)} cases ({split if one is None else one})")
    for line in lines:
        click.echo(line)
    if check and not met:
        raise SystemExit(1)
