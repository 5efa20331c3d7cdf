"""The raw-batch archive store (`jetl.archive`): what goes in comes out byte for byte, checked; a damaged object is
found, never replayed; a write is atomic and happens once; a full archive names the setting to raise. And the bus:
a full stream is a full stream, never a leader election."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from nats.js.errors import ServiceUnavailableError

from jetl.archive import SUFFIX, Archive, decode, encode
from jetl.bus import leaderless, store_full
from jetl.errors import ArchiveCorrupt, StoreFull, classify
from jetl.messages.models import Batch
from jetl.messages.wire import decode_batch, encode_batch
from jetl.ops.health import capacity
from jetl.subjects import Kind


def message(run: str = "r1", seq: int = 0, n: int = 200, partition: str | None = None) -> tuple[Batch, bytes]:
    batch = Batch(
        pipeline="sales", run_id=run, seq=seq, schema_name="Row", schema_hash="h", count=n, partition=partition
    )
    body = b"".join(b'{"id": %d, "name": "customer %d", "amount": %d.25}\n' % (i, i % 17, i * 3) for i in range(n))
    return batch, encode_batch(batch, body)


def test_a_batch_comes_back_byte_for_byte_compressed_and_listed_in_order(tmp_path: Path) -> None:
    archive = Archive(str(tmp_path / "archive"))
    written = []
    for seq in (2, 0, 1):
        batch, data = message(seq=seq)
        assert archive.put("sales", "r1", batch.part_id, data) is True
        written.append((batch.part_id, data))
    p_batch, p_data = message(run="r2", seq=3, partition="p0001")  # a partitioned run's batch id has two tokens
    archive.put("sales", "r2", p_batch.part_id, p_data)

    assert archive.batches("sales", "r1") == ["r1/000000", "r1/000001", "r1/000002"]
    assert archive.batches("sales", "r2") == [p_batch.part_id]
    assert archive.batches("sales", "never") == []
    for part_id, data in written:
        assert archive.get("sales", "r1", part_id) == data
    back, body = decode_batch(archive.get("sales", "r2", p_batch.part_id))
    assert back.batch_id == p_batch.batch_id and body == decode_batch(p_data)[1]
    stored = sum(f.stat().st_size for f in (tmp_path / "archive").rglob(f"*{SUFFIX}"))
    assert stored * 3 < sum(len(d) for _, d in written) + len(p_data)  # compressed: JSON lines shrink several-fold
    use = archive.usage()
    assert use.used == stored and use.limit is not None and use.limit > use.used


def test_a_flipped_bit_is_found_by_the_checksum(tmp_path: Path) -> None:
    archive = Archive(str(tmp_path))
    batch, data = message()
    archive.put("sales", "r1", batch.part_id, data)
    path = Path(archive.path("sales", "r1", batch.part_id))
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # inside the compressed frame
    path.write_bytes(bytes(raw))
    with pytest.raises(ArchiveCorrupt):
        archive.get("sales", "r1", batch.part_id)
    # the same bytes recompressed but with another checksum in the header: the SHA-256 catches it
    other = encode(data)
    forged = other[:8] + bytes(32) + other[40:]
    with pytest.raises(ArchiveCorrupt, match="checksum"):
        decode(forged)
    with pytest.raises(ArchiveCorrupt):
        decode(b"not an archive object")
    assert classify(ArchiveCorrupt("x")) == "terminal"


def test_re_archiving_writes_once_and_mends_a_damaged_copy(tmp_path: Path) -> None:
    archive = Archive(str(tmp_path))
    batch, data = message()
    assert archive.put("sales", "r1", batch.part_id, data) is True
    path = Path(archive.path("sales", "r1", batch.part_id))
    before = path.stat().st_mtime_ns, path.stat().st_ino
    assert archive.put("sales", "r1", batch.part_id, data) is False  # a redelivery: nothing written
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == before
    path.write_bytes(path.read_bytes()[:20])  # torn
    assert archive.put("sales", "r1", batch.part_id, data) is True
    assert archive.get("sales", "r1", batch.part_id) == data


def test_a_write_is_atomic_nothing_half_written_is_ever_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = Archive(str(tmp_path))
    batch, data = message()

    def crash(src: str, dst: str) -> None:  # the process dies between writing the temp file and renaming it
        raise OSError("killed")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        archive.put("sales", "r1", batch.part_id, data)
    monkeypatch.undo()
    assert archive.batches("sales", "r1") == []  # no object, and no temp file left behind
    assert [p.name for p in (tmp_path / "sales" / "r1").iterdir()] == []
    assert archive.put("sales", "r1", batch.part_id, data) is True
    assert archive.get("sales", "r1", batch.part_id) == data


def test_a_full_archive_names_the_setting_to_raise(tmp_path: Path) -> None:
    batch, data = message()
    archive = Archive(str(tmp_path), max_bytes=len(encode(data)) + 10)
    archive.put("sales", "r1", batch.part_id, data)
    second, data2 = message(seq=1)
    with pytest.raises(StoreFull, match="JETL_ARCHIVE__MAX_BYTES") as err:
        archive.put("sales", "r1", second.part_id, data2)
    assert "archive" in str(err.value) and classify(err.value) == "transient"
    assert archive.batches("sales", "r1") == [batch.part_id]


def test_an_object_store_url_works_through_pyarrow_fs(tmp_path: Path) -> None:
    archive = Archive(f"file://{tmp_path}/objects")
    batch, data = message()
    archive.put("sales", "r1", batch.part_id, data)
    assert Archive(f"file://{tmp_path}/objects").get("sales", "r1", batch.part_id) == data


def full_stream_error() -> ServiceUnavailableError:
    return ServiceUnavailableError(code=503, err_code=10077, description="maximum bytes exceeded")


def test_a_full_stream_is_named_with_its_setting_never_a_leader_election() -> None:
    exc = full_stream_error()
    assert not leaderless(exc)  # what nats-server 2.x answers to a publish on a full stream: a 503 with code 10077
    assert leaderless(ServiceUnavailableError(code=503, description="JetStream system temporarily unavailable"))
    full = store_full(Kind.RAW, exc)
    assert full is not None and "JETL_RAW" in str(full) and "JETL_NATS__STREAM_MAX_BYTES" in str(full)
    assert '"raw"' in str(full) and "maximum bytes exceeded" in str(full)
    disk = store_full(Kind.RAW, ServiceUnavailableError(code=503, err_code=10047, description="insufficient storage"))
    assert disk is not None and "JetStream store" in str(disk) and "max_file_store" in str(disk)


def test_capacity_warns_at_80_percent_and_fails_at_95() -> None:
    assert capacity(79, 100, "X")[0] == "ok"
    assert capacity(80, 100, "X")[0] == "warn"
    status, detail = capacity(39 * 2**20, 40 * 2**20, "JETL_NATS__STREAM_MAX_BYTES", 7)
    assert status == "fail" and "39.0 MiB of 40.0 MiB" in detail and "JETL_NATS__STREAM_MAX_BYTES" in detail
    assert capacity(5, -1, "X") == ("ok", "5 B used, no limit")


def test_the_cli_reports_a_full_stream_as_full_never_as_nats_being_down(capsys: pytest.CaptureFixture[str]) -> None:
    import typer

    from jetl.cli._output import EXIT_FAILED, fail

    full = store_full(Kind.RUN, full_stream_error())
    for exc in (full, full_stream_error()):
        with pytest.raises(typer.Exit) as ended:
            fail(exc)  # type: ignore[arg-type]
        said = capsys.readouterr().err
        assert ended.value.exit_code == EXIT_FAILED and "is NATS running" not in said
        assert "maximum bytes exceeded" in said and "jetl health" in said


def test_retention_removes_runs_past_their_pipelines_days_and_keeps_the_rest(tmp_path: Path) -> None:
    archive = Archive(str(tmp_path))
    now = 1_800_000_000.0
    for pipeline, run, age_days in (("sales", "old", 10), ("sales", "new", 1), ("audit", "old", 400), ("web", "x", 9)):
        batch = Batch(pipeline=pipeline, run_id=run, seq=0, schema_name="Row", schema_hash="h", count=1)
        archive.put(pipeline, run, batch.part_id, encode_batch(batch, b'{"id": 1}\n'))
        path = archive.path(pipeline, run, batch.part_id)
        os.utime(path, (now - age_days * 86400, now - age_days * 86400))

    removed = archive.prune({"sales": 7, "*": 30, "audit": 365 * 2}, now=now)

    assert removed == [("sales", "old")]
    assert archive.batches("sales", "old") == [] and archive.batches("sales", "new") == ["new/000000"]
    assert archive.batches("audit", "old") == ["old/000000"]  # its own days: two years
    assert archive.prune({"*": 5, "audit": 730}, now=now) == [("web", "x")]  # "*" is every pipeline not named
    assert archive.prune({}, now=now) == []  # no retention: everything for good
    assert archive.batches("audit", "old") == ["old/000000"]


async def test_a_write_refused_for_room_outside_a_publish_is_retried_and_logged_as_full(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from jetl.runtime.stage import decide_ack

    class Msg:
        naked: float | None = None

        async def nak(self, delay: float) -> None:
            self.naked = delay

    async def never(exc: BaseException) -> None:
        raise AssertionError("a full bucket is no reason to dead-letter")

    msg = Msg()
    assert await decide_ack(msg, full_stream_error(), never) == "nak" and msg.naked is not None
    said = "".join(capsys.readouterr())  # stdout before logging is configured, stderr after
    assert "transient failure, will retry" in said and "maximum bytes exceeded" in said
    assert "JETL_NATS__STATE_MAX_BYTES" in said and "jetl health" in said


def test_ids_that_are_no_tokens_never_become_paths(tmp_path: Path) -> None:
    from jetl.errors import ConfigError

    archive = Archive(str(tmp_path / "a"))
    for pipeline, run, part in (("..", "r1", "r1/000000"), ("sales", "r1", "r1/../../x"), ("s/x", "r1", "r1/0")):
        with pytest.raises(ConfigError):
            archive.path(pipeline, run, part)
    with pytest.raises(ValueError):
        archive.path("sales", "r1", "r2/000000")
