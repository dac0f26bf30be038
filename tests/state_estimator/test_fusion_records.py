"""The fusion state split into keyed records (what the Faust table stores), and when a worker
may write them."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from faust.types import TP
from state_builders import FACILITY, OFFSET, T0, end, identity, position

from schemas.base import Message
from schemas.facility import load_facility
from services.runtime.settings import Settings
from services.state_estimator.app import StateEstimatorApp
from services.state_estimator.config import StateEstimatorServiceSettings
from services.state_estimator.fusion import FusionCore, FusionState, records
from services.state_estimator.fusion.state import Departed

HEAD, TAIL = 2.0, 18.97


def scene(seconds: float) -> list[Message]:
    """A TEM2 on T1 seen from two cameras, its plate read by one, at 2 fps."""
    out: list[Message] = []
    for tick in range(int(seconds * 2)):
        at = tick * 0.5
        out += [
            position("cam-s1", tick, at, end("head", "T1", HEAD + OFFSET)),
            position("cam-s2", tick, at + 0.01, end("tail", "T1", TAIL - OFFSET)),
            identity("cam-s1", tick, at + 0.02, "T1", HEAD + 1.0, "TEM2-1234"),
        ]
    return out


def fold(
    core: FusionCore, messages: list[Message], state: FusionState | None = None
) -> FusionState:
    state = state or FusionState()
    for msg in messages:
        state, _ = core.apply(state, msg)  # type: ignore[arg-type]
    return state


def run(core: FusionCore, seconds: float) -> FusionState:
    return fold(core, scene(seconds))


def test_split_and_join_give_back_the_same_state(core: FusionCore) -> None:
    state = run(core, 5)
    assert state.locomotives, "the scene must start a locomotive"
    state.departed.append(Departed(track_id="T2", low_m=-20.0, high_m=-0.5, left_at=T0))
    parts = records.split(state)
    assert set(parts) >= {"meta", "cameras", "track/T1"}
    back = records.join(parts)
    assert back.model_dump() == state.model_dump()
    assert core.render(back) == core.render(state)


def test_a_record_is_small_next_to_the_whole_state(core: FusionCore) -> None:
    state = run(core, 5)
    parts = records.split(state)
    whole = len(state.model_dump_json())
    assert max(len(v) for v in parts.values()) < whole


def test_diff_writes_only_what_changed_and_deletes_what_is_gone() -> None:
    before = {"meta": b"1", "cameras": b"x", "track/T1": b"y", "track/T2": b"z"}
    after = {"meta": b"2", "cameras": b"x", "track/T1": b"y"}
    assert records.diff(before, after) == {"meta": b"2", "track/T2": None}
    assert records.diff(after, after) == {}


def test_records_from_different_checkpoints_never_reuse_an_id(core: FusionCore) -> None:
    old = records.split(FusionState())  # meta from before the locomotive was started
    new = records.split(run(core, 5))
    mixed = {**new, "meta": old["meta"]}
    state = records.join(mixed)
    used = {lo.locomotive_id for lo in state.locomotives}
    assert f"loco-{state.next_id}" not in used
    assert state.next_id > max(int(i.rsplit("-", 1)[1]) for i in used)
    assert state.watermark is not None


def test_a_redelivered_estimate_after_a_mixed_restore_adds_no_locomotive(
    core: FusionCore,
) -> None:
    # A crash in mid-checkpoint: the track record is new, the camera records are older.
    messages = scene(5)
    early = records.split(fold(core, messages[:12]))
    late = fold(core, messages)
    mixed = {**records.split(late), "cameras": early["cameras"]}
    # Everything after the early checkpoint is delivered again.
    again = fold(core, messages[12:], records.join(mixed))
    t1 = next(t for t in core.render(again).tracks if t.track_id == "T1")
    assert [lo.plate for lo in t1.locomotives] == [
        lo.plate
        for lo in next(t for t in core.render(late).tracks if t.track_id == "T1").locomotives
    ]
    assert len(t1.locomotives) == 1


def test_a_worker_that_loses_the_fusion_partition_never_checkpoints_its_copy(
    core: FusionCore, tmp_path: Path
) -> None:
    """Several workers for one flow: the one a rebalance took the fusion partition from must
    not write its (now stale) state over the new owner's checkpoints, and if the partition
    comes back it starts from the table, not from its old copy."""
    app = StateEstimatorApp(
        load_facility(FACILITY),
        "prod",
        Settings(),
        StateEstimatorServiceSettings(data_dir=str(tmp_path)),
    )
    table: dict[bytes, bytes] = {}
    mine = run(core, 5)
    app._state, app._dirty = mine, True
    # Another topic's partition going away changes nothing.
    asyncio.run(app.app.on_partitions_revoked.send({TP(app.positions_topic, 0)}))
    assert app._state is mine
    # The fusion partition goes (the signal Faust sends during a rebalance).
    asyncio.run(app.app.on_partitions_revoked.send({TP(app.internal_topic, 0)}))
    assert asyncio.run(app.checkpoint(table)) == 0
    assert table == {}, "the stale copy reached the changelog"
    # Meanwhile the new owner moved on; the partition comes back to this worker.
    theirs = run(core, 8)
    for key, value in records.split(theirs).items():
        table[f"{app.facility_id}/{key}".encode()] = value
    assert app._load(table).model_dump() == theirs.model_dump()


class StoreTable(dict[bytes, bytes]):
    """A Faust table stand-in whose store (``.data``) is itself."""

    @property
    def data(self) -> StoreTable:
        return self


def test_a_restart_takes_the_state_from_the_changelog_end_not_fausts_partial_table(
    core: FusionCore, tmp_path: Path
) -> None:
    """Field failure: on the embedded broker Faust restored 1 record of a checkpoint (``meta``)
    and every locomotive was re-created under a new id. The worker reads the changelog to its
    end itself; the table is set to it, so a later delete finds its key (Faust writes a
    tombstone only for a key it holds)."""
    app = StateEstimatorApp(
        load_facility(FACILITY),
        "prod",
        Settings(),
        StateEstimatorServiceSettings(data_dir=str(tmp_path)),
    )
    saved = run(core, 5)
    changelog = {f"{app.facility_id}/{k}".encode(): v for k, v in records.split(saved).items()}
    partial = StoreTable({k: v for k, v in changelog.items() if k.endswith(b"/meta")})
    partial[b"other-facility/meta"] = b"{}"  # not in the changelog's end: goes
    assert len(changelog) > 2

    app._changelog_latest = lambda: dict(changelog)  # type: ignore[method-assign]
    state = asyncio.run(app._loaded(partial))

    assert state.model_dump() == saved.model_dump()
    assert dict(partial) == changelog
    # Unreadable changelog: Faust's table is what there is.
    fallback = StateEstimatorApp(
        load_facility(FACILITY),
        "prod",
        Settings(),
        StateEstimatorServiceSettings(data_dir=str(tmp_path)),
    )
    fallback._changelog_latest = lambda: None  # type: ignore[method-assign]
    assert asyncio.run(fallback._loaded(StoreTable(changelog))).model_dump() == saved.model_dump()


def test_estimates_waiting_for_the_first_changelog_read_are_not_acknowledged(
    tmp_path: Path,
) -> None:
    """The fuse agent queues an estimate, then reads the changelog (seconds); a checkpoint
    meanwhile must not acknowledge it: a crash would lose an estimate never fused."""

    class Stream:
        def __init__(self) -> None:
            self.acked: list[object] = []

        async def ack(self, event: object) -> None:
            self.acked.append(event)

    app = StateEstimatorApp(
        load_facility(FACILITY),
        "prod",
        Settings(),
        StateEstimatorServiceSettings(data_dir=str(tmp_path)),
    )
    stream = Stream()
    app._unacked.append((stream, "estimate"))
    assert asyncio.run(app.checkpoint(StoreTable())) == 0
    assert stream.acked == []
    app._changelog_latest = lambda: {}  # type: ignore[method-assign]
    asyncio.run(app._loaded(StoreTable()))
    asyncio.run(app.checkpoint(StoreTable()))
    assert stream.acked == ["estimate"]


def test_a_changelog_read_overtaken_by_a_revoke_is_thrown_away_and_made_again(
    core: FusionCore, tmp_path: Path
) -> None:
    """A rebalance takes the fusion partition away while the worker reads the changelog: what
    that read returns may be older than what the next owner checkpoints, so it must not be
    installed; the worker reads again."""
    app = StateEstimatorApp(
        load_facility(FACILITY),
        "prod",
        Settings(),
        StateEstimatorServiceSettings(data_dir=str(tmp_path)),
    )
    old, new = run(core, 2), run(core, 5)
    assert old.model_dump() != new.model_dump()
    prefix = app.facility_id
    reads: list[str] = []
    reading = threading.Event()
    go_on = threading.Event()

    def changelog_latest() -> dict[bytes, bytes]:
        reads.append("read")
        state = old if len(reads) == 1 else new
        if len(reads) == 1:
            reading.set()
            assert go_on.wait(10)
        return {f"{prefix}/{k}".encode(): v for k, v in records.split(state).items()}

    app._changelog_latest = changelog_latest  # type: ignore[method-assign]

    async def revoke_during_the_first_read() -> FusionState:
        loading = asyncio.create_task(app._loaded(StoreTable()))
        assert await asyncio.to_thread(reading.wait, 10)
        app.drop_fusion_state("fusion partition revoked")
        go_on.set()
        return await loading

    state = asyncio.run(revoke_during_the_first_read())

    assert reads == ["read", "read"]
    assert state.model_dump() == new.model_dump()
