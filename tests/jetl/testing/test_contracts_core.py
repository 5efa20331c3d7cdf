"""Subjects, the error taxonomy, batch envelopes and the run ledger."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

from jetl import subjects
from jetl.errors import ConfigError, DestinationUnavailable, RecordError, TransientError, classify
from jetl.events import BatchExtracted, BatchLoaded, BatchRejected, BatchTransformed, RunExtracted, parse_event
from jetl.messages.ids import batch_id
from jetl.messages.models import Batch
from jetl.messages.wire import decode_batch, decode_records, encode_batch
from jetl.projection import fold
from jetl.schedule import Cron, run_id_for
from jetl.settings import JetlSettings
from jetl.subjects import Kind


def test_subjects_are_built_from_tokens() -> None:
    assert subjects.raw("orders", "orders-20261125T0000Z") == "jetl.raw.orders.orders-20261125T0000Z"
    assert subjects.dlq("orders", "transform") == "jetl.dlq.orders.transform"
    assert subjects.pattern(Kind.EVENTS, "orders") == "jetl.events.orders.*.>"  # as published and as stored
    assert subjects.pattern(Kind.RUN) == "jetl.run.>"
    for bad in ("a.b", "a b", "a*", "a>", ""):
        with pytest.raises(ConfigError):
            subjects.raw(bad, "r1")


def test_classification_decides_retry_or_dead_letter() -> None:
    assert classify(TransientError("x")) == "transient"
    assert classify(DestinationUnavailable("x")) == "transient"
    assert classify(TimeoutError()) == "transient"
    assert classify(ConnectionResetError()) == "transient"
    assert classify(httpx.ConnectError("refused")) == "transient"
    assert classify(NoStreamResponseError()) == "transient"  # a clustered stream electing its leader
    assert classify(ServiceUnavailableError(code=503, err_code=10008)) == "transient"  # a cluster between leaders
    assert classify(APIError(code=409, err_code=10158)) == "transient"  # a retried publish, its first still storing
    assert classify(RecordError("p", [])) == "terminal"
    assert classify(KeyError("unknown bug")) == "terminal"  # never retried forever, never dropped: DLQ


def test_a_database_that_answers_no_is_not_retried() -> None:
    import sqlite3

    import sqlalchemy.exc

    def operational(message: str) -> sqlalchemy.exc.OperationalError:
        return sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception(message))

    assert classify(operational("connection to server at 127.0.0.1 failed: Connection refused")) == "transient"
    assert classify(sqlite3.OperationalError("database is locked")) == "transient"
    assert classify(operational('FATAL:  password authentication failed for user "etl"')) == "terminal"
    assert classify(operational('FATAL:  database "shop" does not exist')) == "terminal"
    assert classify(sqlite3.OperationalError("no such table: orders")) == "terminal"


def test_batch_envelope_round_trip_and_deterministic_id() -> None:
    b = Batch(pipeline="p", run_id="r1", seq=7, schema_name="S", schema_hash="h", count=2, origins=["f:1", "f:2"])
    assert b.batch_id == batch_id("r1", 7) == "r1/000007"
    head, body = decode_batch(encode_batch(b, [{"a": 1, "at": datetime(2026, 1, 1, tzinfo=UTC)}, {"a": 2}]))
    assert head == b
    assert decode_records(body)[0] == {"a": 1, "at": "2026-01-01T00:00:00+00:00"}
    assert head.origin(1) == "f:2" and head.origin(5) is None


def test_ledger_reconciles_with_rejects_filters_and_a_dead_batch() -> None:
    base = {"pipeline": "p", "run_id": "r"}
    events = [
        BatchExtracted(**base, batch_id="r/000000", seq=0, records=10, rejected=1),
        BatchExtracted(**base, batch_id="r/000001", seq=1, records=5),
        RunExtracted(**base, batches=2, records=15, rejected=1),
        BatchTransformed(**base, batch_id="r/000000", seq=0, records_in=10, records_out=7, rejected=2, filtered=1),
        BatchRejected(**base, batch_id="r/000000", seq=0, stage="transform", records=2, reason="x"),
        BatchLoaded(**base, batch_id="r/000000", seq=0, records=7),
        BatchRejected(**base, batch_id="r/000001", seq=1, stage="transform", records=5, reason="y", scope="batch"),
    ]
    state = None
    for ev in events:
        state = fold(state, parse_event(ev.model_dump_json().encode()))
    assert state is not None
    assert state.counts() == {"extracted": 16, "loaded": 7, "rejected": 8, "filtered": 1, "batches": 2}
    assert state.reconciles and state.settled


def test_run_not_settled_until_every_batch_is_accounted_for() -> None:
    base = {"pipeline": "p", "run_id": "r"}
    state = fold(None, RunExtracted(**base, batches=2, records=4))
    state = fold(state, BatchLoaded(**base, batch_id="r/000000", seq=0, records=2))
    state = fold(state, BatchRejected(**base, batch_id="r/000001", seq=1, stage="transform", records=1, reason="z"))
    assert not state.settled  # record-level rejects do not end a batch
    state = fold(state, BatchLoaded(**base, batch_id="r/000001", seq=1, records=1))
    assert state.settled


def test_cron_intervals_and_deterministic_run_ids() -> None:
    cron = Cron("0 0 * * *", tz="UTC")
    days = list(cron.intervals(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 4, tzinfo=UTC)))
    assert [s.day for s, _ in days] == [1, 2, 3]
    assert days[0][1] == datetime(2026, 11, 2, tzinfo=UTC)
    assert run_id_for("daily_sales", days[0][0]) == "daily_sales-20261101T0000Z"
    with pytest.raises(ConfigError):
        Cron("not cron")
    with pytest.raises(ConfigError):
        Cron("0 * * * *", tz="Mars/Olympus")


def test_settings_nest_with_double_underscore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETL_NATS__URL", "nats://a:1,nats://b:2")
    monkeypatch.setenv("JETL_NATS__PASSWORD", "s3cret")
    monkeypatch.setenv("JETL_CLICKHOUSE__DSN", "https://ch:8443")
    s = JetlSettings()
    assert s.nats.servers == ["nats://a:1", "nats://b:2"]
    assert s.clickhouse_dsn == "https://ch:8443"
    assert "s3cret" not in repr(s) and "s3cret" not in s.model_dump_json()


def test_a_load_rejection_folded_before_the_transformers_event_is_not_lost() -> None:
    # The transformer publishes the clean batch, then its event; the loader may refuse the batch in between.
    base = {"pipeline": "p", "run_id": "r"}
    state = fold(None, BatchExtracted(**base, batch_id="r/000000", seq=0, records=10))
    state = fold(state, RunExtracted(**base, batches=1, records=10))
    state = fold(
        state, BatchRejected(**base, batch_id="r/000000", seq=0, stage="load", records=7, reason="x", scope="batch")
    )
    state = fold(
        state,
        BatchTransformed(**base, batch_id="r/000000", seq=0, records_in=10, records_out=7, rejected=3, filtered=0),
    )
    assert state.counts()["rejected"] == 10 and state.reconciles and state.settled
