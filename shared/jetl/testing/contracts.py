"""Contract suites: one abstract pytest suite per plugin protocol; subclass one for your connector.

A suite is a plain class whose name does not start with `Test`, so pytest collects only your subclass. Provide the
fixtures it asks for (`extractor`, `transformer` and `records`, `loader` and `records`, ...) and the suite checks the
behaviour the services rely on. The tests are synchronous (async extractors run on `asyncio.run`), so they work
with or without pytest-asyncio::

    from jetl.testing.contracts import LoaderContract

    class TestMyLoader(LoaderContract):
        @pytest.fixture
        def loader(self, tmp_path):
            return MyLoader(tmp_path)

        @pytest.fixture
        def records(self):
            return [{"id": 1}, {"id": 2}]

        def count_rows(self, loader, ctx):
            return loader.count(ctx.pipeline)

A fake passes the same suite as the real thing; that is what makes it a fair stand-in in other tests.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import BaseModel

from jetl.errors import RecordError
from jetl.messages.ids import batch_id
from jetl.messages.wire import dumps
from jetl.protocols import (
    DISPOSITIONS,
    IS_CURRENT,
    VALID_FROM,
    VALID_TO,
    Check,
    Chunk,
    Deletes,
    Disposition,
    ExtractContext,
    Extractor,
    LineageLoader,
    LoadContext,
    Loader,
    Record,
    RunView,
    SchemaCheckingLoader,
    Transformer,
    VersionedLoader,
    WriteSpec,
    declares_fields,
    fields_out,
    log_version,
)
from jetl.settings import JetlSettings

__all__ = [
    "ExtractorContract",
    "LineageLoaderContract",
    "LoaderContract",
    "TransformerContract",
    "VersionedLoaderContract",
]


class _Checked:
    """What both connector suites share: the settings `check()` is given, and what a good answer is."""

    @pytest.fixture
    def settings(self) -> JetlSettings:
        """The settings a connector's `check()` is given (override the fixture to set a DSN or a data folder)."""
        return JetlSettings()

    @staticmethod
    def assert_checks_ok(connector: Extractor | Loader, settings: JetlSettings) -> None:
        """`connector.check(settings)` is a Check of status "ok" with a detail for people."""
        result = connector.check(settings)
        assert isinstance(result, Check), f"check() returned {type(result).__name__}, not a jetl.protocols.Check"
        assert result.status == "ok", f"the sample connector checks {result.status}: {result.detail}"
        assert isinstance(result.detail, str) and result.detail.strip(), "check() must say what it found"


def extract_all(extractor: Extractor, ctx: ExtractContext) -> list[Chunk]:
    """Run `extractor.extract(ctx)` to the end on a private event loop and return its chunks."""

    async def collect() -> list[Chunk]:
        return [chunk async for chunk in extractor.extract(ctx)]

    return asyncio.run(collect())


class ExtractorContract(_Checked):
    """What every Extractor must do: bounded Chunk objects, aligned origins, a JSON-serialisable cursor, a check().

    Fixtures to provide: `extractor` (reading a small sample source). Optional: `context` (an ExtractContext),
    `expected_records` (how many records the sample holds; None skips the count), `malformed_extractor` (one over
    input with at least one unreadable item; the default skips that test), `settings` (what `check()` is given).
    Class attributes: `max_chunk_size`
    (the bound every chunk must respect) and `rerun_is_empty` (False for extractors whose cursor is inclusive).
    """

    max_chunk_size: int = 10_000
    rerun_is_empty: bool = True

    @pytest.fixture
    def extractor(self) -> Extractor:
        """The extractor under test, over a small sample source."""
        raise NotImplementedError("provide an `extractor` fixture")

    @pytest.fixture
    def context(self) -> ExtractContext:
        """The run the extractor serves."""
        return ExtractContext(pipeline="contract", run_id="contract-run")

    @pytest.fixture
    def expected_records(self) -> int | None:
        """How many records the sample source holds (None: not checked)."""
        return None

    @pytest.fixture
    def malformed_extractor(self) -> Extractor | None:
        """An extractor over input with unreadable items (None: the test is skipped)."""
        return None

    def test_implements_the_protocol(self, extractor: Extractor) -> None:
        """It is an Extractor (extract and next_cursor)."""
        assert isinstance(extractor, Extractor)

    def test_check_is_ok_for_the_sample(self, extractor: Extractor, settings: JetlSettings) -> None:
        """check() on a well-configured extractor answers ok, with a detail, without extracting anything."""
        self.assert_checks_ok(extractor, settings)

    def test_yields_bounded_chunks_of_records(self, extractor: Extractor, context: ExtractContext) -> None:
        """Every item is a Chunk of at most `max_chunk_size` dict records, origins aligned with the records."""
        chunks = extract_all(extractor, context)
        assert chunks, "the sample source yielded no chunk at all"
        for chunk in chunks:
            assert isinstance(chunk, Chunk), f"extract yielded {type(chunk).__name__}, not a Chunk"
            assert isinstance(chunk.records, list)
            assert len(chunk.records) <= self.max_chunk_size, f"a chunk of {len(chunk.records)} records"
            assert all(isinstance(r, dict) for r in chunk.records), "records must be dicts"
            if chunk.origins is not None:
                assert len(chunk.origins) == len(chunk.records), "one origin per record"
                assert all(isinstance(o, str) and o for o in chunk.origins)
            for item in chunk.rejected:
                assert isinstance(item, tuple) and len(item) == 2 and all(isinstance(x, str) for x in item)
            if chunk.position is not None:
                json.dumps(chunk.position)

    def test_records_survive_the_wire(self, extractor: Extractor, context: ExtractContext) -> None:
        """Records encode as JSON (they travel as a JSON array in a NATS message)."""
        for chunk in extract_all(extractor, context):
            dumps(chunk.records)

    def test_extracts_the_whole_sample(
        self, extractor: Extractor, context: ExtractContext, expected_records: int | None
    ) -> None:
        """All the sample's records come out, none twice."""
        if expected_records is None:
            pytest.skip("no expected_records given")
        assert sum(len(c.records) for c in extract_all(extractor, context)) == expected_records

    def test_next_cursor_is_json_and_resumes(self, extractor: Extractor, context: ExtractContext) -> None:
        """next_cursor() after a run is None or JSON-serialisable; fed back, it yields nothing already seen."""
        first = sum(len(c.records) for c in extract_all(extractor, context))
        cursor = extractor.next_cursor()
        if cursor is None:
            return
        assert isinstance(cursor, dict)
        stored = json.loads(json.dumps(cursor))  # the scheduler keeps it as JSON: it must round-trip
        again = ExtractContext(
            pipeline=context.pipeline,
            run_id=context.run_id + "-2",
            cursor=stored,
            params=dict(context.params),
            data_interval_start=context.data_interval_start,
            data_interval_end=context.data_interval_end,
        )
        second = sum(len(c.records) for c in extract_all(extractor, again))
        if self.rerun_is_empty:
            assert second == 0, f"re-running from the cursor yielded {second} records again"
        else:
            assert second <= first

    def test_malformed_input_is_rejected_not_raised(self, malformed_extractor: Extractor | None) -> None:
        """Unreadable input shows up in Chunk.rejected with an origin and a reason; the run goes on."""
        if malformed_extractor is None:
            pytest.skip("no malformed_extractor given")
        chunks = extract_all(malformed_extractor, ExtractContext(pipeline="contract", run_id="contract-bad"))
        rejected = [r for c in chunks for r in c.rejected]
        assert rejected, "nothing was rejected"
        assert all(origin and reason for origin, reason in rejected)


class TransformerContract:
    """What every Transformer must do: a list of dicts out, single records rejected via RecordError(survivors=...).

    Fixtures to provide: `transformer`, `records` (a valid sample input). Optional: `bad_records` (input with at
    least one record the transformer must reject; None skips that test).
    """

    @pytest.fixture
    def transformer(self) -> Transformer:
        """The transformer under test."""
        raise NotImplementedError("provide a `transformer` fixture")

    @pytest.fixture
    def records(self) -> list[Record]:
        """A valid sample input."""
        raise NotImplementedError("provide a `records` fixture")

    @pytest.fixture
    def bad_records(self) -> list[Record] | None:
        """Input with at least one record to reject (None: the test is skipped)."""
        return None

    def test_implements_the_protocol(self, transformer: Transformer) -> None:
        """It is a Transformer."""
        assert isinstance(transformer, Transformer)

    def test_returns_a_list_of_dicts(self, transformer: Transformer, records: list[Record]) -> None:
        """transform() returns a list of dict records."""
        out = transformer.transform(copy.deepcopy(records))
        assert isinstance(out, list)
        assert all(isinstance(r, dict) for r in out)

    def test_does_not_mutate_its_input(self, transformer: Transformer, records: list[Record]) -> None:
        """The input batch is left as it was (the stage may dead-letter it as received)."""
        given = copy.deepcopy(records)
        transformer.transform(given)
        assert given == records

    def test_is_deterministic(self, transformer: Transformer, records: list[Record]) -> None:
        """The same input gives the same output (replay relies on it)."""
        assert transformer.transform(copy.deepcopy(records)) == transformer.transform(copy.deepcopy(records))

    def test_empty_batch(self, transformer: Transformer) -> None:
        """An empty batch gives an empty batch."""
        assert transformer.transform([]) == []

    def test_rejects_records_with_survivors(
        self, transformer: Transformer, records: list[Record], bad_records: list[Record] | None
    ) -> None:
        """Bad records raise RecordError naming each by input index; the survivors are the good records' output."""
        if bad_records is None:
            pytest.skip("no bad_records given")
        with pytest.raises(RecordError) as info:
            transformer.transform(copy.deepcopy(bad_records))
        err = info.value
        assert err.issues, "a RecordError must say which records failed"
        assert all(0 <= i.index < len(bad_records) for i in err.issues), "issue indices point into the input"
        assert all(i.message for i in err.issues)
        assert err.survivors is not None, "RecordError must carry the survivors (the rest of the batch goes on)"
        assert all(isinstance(r, dict) for r in err.survivors)
        good = [r for i, r in enumerate(bad_records) if i not in {x.index for x in err.issues}]
        assert err.survivors == transformer.transform(copy.deepcopy(good))

    def test_declared_output_fields_are_what_comes_out(self, transformer: Transformer, records: list[Record]) -> None:
        """If the transformer declares its output fields, every record it emits has exactly those."""
        keys = {frozenset(r) for r in records}
        given = next(iter(keys)) if len(keys) == 1 else None
        if not declares_fields(transformer):
            pytest.skip("the transformer declares no output fields")
        declared = fields_out(transformer, given)
        if declared is None:
            pytest.skip("output fields cannot be known for this input")
        for r in transformer.transform(copy.deepcopy(records)):
            assert frozenset(r) == declared


class LoaderContract(_Checked):
    """What every Loader must do: idempotent per batch id, count what it wrote, describe where, check itself.

    Fixtures to provide: `loader`, `records` (a sample batch). Optional: `schema` (the pipeline's record model,
    passed in the LoadContext), `settings` (what `check()` is given). Method to provide: `count_rows(loader, ctx)`,
    the rows the destination holds for `ctx.pipeline`.
    """

    @pytest.fixture
    def loader(self) -> Loader:
        """The loader under test, writing somewhere a test can count."""
        raise NotImplementedError("provide a `loader` fixture")

    @pytest.fixture
    def records(self) -> list[Record]:
        """A sample batch (at least one record)."""
        raise NotImplementedError("provide a `records` fixture")

    @pytest.fixture
    def schema(self) -> type[BaseModel] | None:
        """The pipeline's record model, given to the loader in the LoadContext."""
        return None

    def count_rows(self, loader: Loader, ctx: LoadContext) -> int:
        """How many rows the destination holds for `ctx.pipeline`."""
        raise NotImplementedError("provide count_rows(loader, ctx)")

    @staticmethod
    def context(schema: type[BaseModel] | None, seq: int = 1, run_id: str = "contract-run") -> LoadContext:
        """The LoadContext of batch `seq` of a run."""
        return LoadContext(pipeline="contract", run_id=run_id, batch_id=batch_id(run_id, seq), schema=schema)

    def _prepare(self, loader: Loader, schema: type[BaseModel] | None) -> None:
        if schema is not None and isinstance(loader, SchemaCheckingLoader):
            loader.check_schema(schema)  # what Pipeline does at start-up

    def test_implements_the_protocol(self, loader: Loader) -> None:
        """It is a Loader."""
        assert isinstance(loader, Loader)

    def test_check_is_ok_for_the_sample(self, loader: Loader, settings: JetlSettings) -> None:
        """check() on a well-configured loader answers ok, with a detail, without writing anything."""
        self.assert_checks_ok(loader, settings)
        assert self.count_rows(loader, self.context(None)) == 0

    def test_describe_is_not_empty(self, loader: Loader) -> None:
        """describe() names the destination, for logs and events."""
        text = loader.describe()
        assert isinstance(text, str) and text.strip()

    def test_load_returns_the_count(
        self, loader: Loader, records: list[Record], schema: type[BaseModel] | None
    ) -> None:
        """load() returns how many records it wrote, and they are there."""
        assert records, "the contract needs a non-empty sample batch"
        self._prepare(loader, schema)
        ctx = self.context(schema)
        assert loader.load(copy.deepcopy(records), ctx) == len(records)
        assert self.count_rows(loader, ctx) == len(records)

    def test_same_batch_id_twice_leaves_one_copy(
        self, loader: Loader, records: list[Record], schema: type[BaseModel] | None
    ) -> None:
        """Loading a batch again (a redelivery) leaves one copy."""
        self._prepare(loader, schema)
        ctx = self.context(schema)
        loader.load(copy.deepcopy(records), ctx)
        loader.load(copy.deepcopy(records), ctx)
        assert self.count_rows(loader, ctx) == len(records)

    def test_other_batches_add_rows(
        self, loader: Loader, records: list[Record], schema: type[BaseModel] | None
    ) -> None:
        """A different batch id is a different batch, even with the same records."""
        self._prepare(loader, schema)
        loader.load(copy.deepcopy(records), self.context(schema, 1))
        loader.load(copy.deepcopy(records), self.context(schema, 2))
        assert self.count_rows(loader, self.context(schema)) == 2 * len(records)

    def test_empty_batch(self, loader: Loader, schema: type[BaseModel] | None) -> None:
        """An empty batch writes nothing and returns 0."""
        self._prepare(loader, schema)
        ctx = self.context(schema, 3)
        assert loader.load([], ctx) == 0
        assert self.count_rows(loader, ctx) == 0


class VersionedItem(BaseModel):
    """The record model `VersionedLoaderContract` loads: a key, a value and a delete flag."""

    id: int
    value: int
    deleted: bool = False


@dataclass(frozen=True)
class Delivery:
    """One batch as it reaches a loader: a run's own, a redelivery of it, or a replay's (which supersedes it)."""

    run_id: str
    seq: int
    version: int
    records: list[Record]
    supersedes: str | None = None


@dataclass
class Extraction:
    """Runs as a source's log holds them: per run, its batches of (version, records), versions rising."""

    runs: list[list[tuple[int, list[Record]]]]

    def rows(self) -> list[tuple[int, str, Record]]:
        """(version, run id, record) of every record extracted, in log order."""
        return [
            (version + i, f"r{n}", r)
            for n, run in enumerate(self.runs)
            for version, records in run
            for i, r in enumerate(records)
        ]

    def expected(self, spec: WriteSpec) -> list[tuple[Any, ...]]:
        """What the destination must mean once every batch has arrived, whatever the order: the reference model."""
        rows = self.rows()
        if spec.disposition == "append":
            return sorted((r["id"], r["value"]) for _, _, r in rows)
        if spec.disposition == "replace":
            newest = max(rows, key=lambda x: x[0])[1]
            return sorted((r["id"], r["value"]) for _, run, r in rows if run == newest)
        deleted = spec.deletes or Deletes("__never__")
        by_key: dict[int, list[tuple[int, Record]]] = {}
        for version, _, r in rows:
            by_key.setdefault(r["id"], []).append((version, r))
        if spec.disposition == "merge":
            latest = {k: max(vs, key=lambda x: x[0])[1] for k, vs in by_key.items()}
            return sorted((k, r["value"]) for k, r in latest.items() if not deleted(r))
        out = []
        for k, vs in by_key.items():
            vs.sort(key=lambda x: x[0])
            for (v, r), after in zip(vs, [*vs[1:], None], strict=True):
                if not deleted(r):
                    until = None if after is None else after[0]
                    out.append((k, r["value"], v, until, until is None))
        return sorted(out, key=repr)


def _project(rows: list[Record], spec: WriteSpec) -> list[tuple[Any, ...]]:
    """Current rows in the reference model's shape (values read back as text from CSV compare as numbers)."""
    if spec.disposition == "history":

        def until(v: Any) -> int | None:
            return None if v in (None, "") else int(v)

        return sorted(
            (
                (
                    int(r["id"]),
                    int(r["value"]),
                    int(r[VALID_FROM]),
                    until(r[VALID_TO]),
                    r[IS_CURRENT] in (True, 1, "true"),
                )
                for r in rows
            ),
            key=repr,
        )
    return sorted((int(r["id"]), int(r["value"])) for r in rows)


class VersionedLoaderContract:
    """What a loader that keeps versions must do (`jetl.protocols.VersionedLoader`), in every disposition: per key
    the row of the highest version whatever order batches arrive in, replays that never revert a later run's rows,
    redeliveries that add nothing, delete markers, history spans and atomic replaces.

    Method to provide: `new_loader(spec, name)`, a fresh loader (its own table or folder, `name` is unique) for
    pipeline `name`; the suite tells it `write_as(spec)` and binds the schema (`check_schema`) as a Pipeline does.
    A loader that is also a LineageLoader gets replays (`remove_batch` of the parent's batch after the replay's).
    Class attribute: `max_examples` (hypothesis examples per disposition in the interleaving test).
    """

    max_examples: int = 40

    def new_loader(self, spec: WriteSpec, name: str) -> Loader:
        """A fresh loader for pipeline `name`, writing where nothing else does."""
        raise NotImplementedError("provide new_loader(spec, name)")

    @staticmethod
    def spec(disposition: Disposition) -> WriteSpec:
        """The suite's spec of a disposition: key `id`, and delete markers on `deleted` where they apply."""
        keyed = disposition in ("merge", "history")
        return WriteSpec(disposition, ("id",) if keyed else (), Deletes("deleted") if keyed else None)

    def _open(self, spec: WriteSpec) -> tuple[VersionedLoader, str]:
        name = f"v{uuid.uuid4().hex[:12]}"
        loader = self.new_loader(spec, name)
        assert isinstance(loader, VersionedLoader), f"{loader!r} is not a jetl.protocols.VersionedLoader"
        loader.write_as(spec)
        if isinstance(loader, SchemaCheckingLoader):
            loader.check_schema(VersionedItem)  # what Pipeline does at start-up
        return loader, name

    @staticmethod
    def deliver(loader: VersionedLoader, pipeline: str, d: Delivery) -> None:
        """Write one batch as the loader service does: the batch, then (a replay) remove the one it supersedes."""
        ctx = LoadContext(pipeline, d.run_id, batch_id(d.run_id, d.seq), schema=VersionedItem, version=d.version)
        assert isinstance(loader, Loader)
        loader.load(copy.deepcopy(d.records), ctx)
        if d.supersedes is not None and isinstance(loader, LineageLoader):
            loader.remove_batch(pipeline, d.supersedes)

    def check(self, spec: WriteSpec, extraction: Extraction, order: list[Delivery], runs: RunView) -> None:
        """Deliver `order` to a fresh loader; its current rows must be the reference model's."""
        loader, name = self._open(spec)
        for d in order:
            self.deliver(loader, name, d)
        got = _project(loader.current_rows(name, runs), spec)
        assert got == extraction.expected(spec), f"{spec.disposition}: delivered {order}"

    @staticmethod
    def _run(versions_from: int, *batches: list[Record]) -> list[tuple[int, list[Record]]]:
        return [(log_version(versions_from + i), list(b)) for i, b in enumerate(batches)]

    @staticmethod
    def deliveries(extraction: Extraction, replays: list[int], redeliveries: list[int]) -> list[Delivery]:
        """Every batch of every run once, a replay (`x<k>`) of each run in `replays`, and again each batch whose
        index is in `redeliveries`: not yet in any order."""
        out: list[Delivery] = []
        for n, run in enumerate(extraction.runs):
            out.extend(Delivery(f"r{n}", seq, v, recs) for seq, (v, recs) in enumerate(run))
        for k, n in enumerate(replays):
            parent = f"r{n % len(extraction.runs)}"
            for seq, (v, recs) in enumerate(extraction.runs[n % len(extraction.runs)]):
                out.append(Delivery(f"{parent}x{k}", seq, v, recs, batch_id(parent, seq)))
        originals = list(out)
        out.extend(originals[i % len(originals)] for i in redeliveries)
        return out

    @staticmethod
    def view(order: list[Delivery]) -> RunView:
        """The run state's view of these deliveries: each replay stands for its parent."""
        return RunView(parents={d.run_id: d.supersedes.partition("/")[0] for d in order if d.supersedes})

    def test_a_replay_of_an_old_run_never_reverts_a_newer_row(self) -> None:
        """Three runs, the third updating a row; a replay of the first, last to arrive: the newer value stays."""
        extraction = Extraction(
            [
                self._run(1, [{"id": 1, "value": 10}, {"id": 2, "value": 20}]),
                self._run(2, [{"id": 3, "value": 30}]),
                self._run(3, [{"id": 1, "value": 11}]),
            ]
        )
        order = self.deliveries(extraction, replays=[0], redeliveries=[])
        self.check(self.spec("merge"), extraction, order, self.view(order))
        assert extraction.expected(self.spec("merge")) == [(1, 11), (2, 20), (3, 30)]

    def test_a_delete_removes_its_key_and_a_later_row_brings_it_back(self) -> None:
        """merge: a delete marker of a newer version removes the key; an older marker arriving late does not."""
        extraction = Extraction(
            [
                self._run(1, [{"id": 1, "value": 1}, {"id": 2, "value": 2}]),
                self._run(2, [{"id": 1, "value": 0, "deleted": True}]),
                self._run(3, [{"id": 2, "value": 0, "deleted": True}, {"id": 1, "value": 3}]),
            ]
        )
        order = list(reversed(self.deliveries(extraction, replays=[1], redeliveries=[0])))
        self.check(self.spec("merge"), extraction, order, self.view(order))
        assert extraction.expected(self.spec("merge")) == [(1, 3)]

    def test_history_spans_follow_the_versions(self) -> None:
        """history: every version of a key, each current until the next one (a delete closes the span)."""
        extraction = Extraction(
            [
                self._run(1, [{"id": 1, "value": 1}]),
                self._run(2, [{"id": 1, "value": 2}]),
                self._run(3, [{"id": 1, "value": 0, "deleted": True}]),
            ]
        )
        order = list(reversed(self.deliveries(extraction, replays=[0], redeliveries=[])))
        self.check(self.spec("history"), extraction, order, self.view(order))

    def test_replace_shows_the_newest_complete_run_only(self) -> None:
        """replace: the newest run's rows; while it is incomplete, the run before it, whole."""
        first = self._run(1, [{"id": 1, "value": 1}], [{"id": 2, "value": 2}])
        second = self._run(3, [{"id": 3, "value": 3}])
        loader, name = self._open(self.spec("replace"))
        order = self.deliveries(Extraction([first, second]), replays=[], redeliveries=[])
        for d in order:
            self.deliver(loader, name, d)
        rows = loader.current_rows(name, RunView(incomplete=frozenset({"r1"})))
        assert _project(rows, self.spec("replace")) == [(1, 1), (2, 2)]
        assert _project(loader.current_rows(name), self.spec("replace")) == [(3, 3)]

    def test_a_superseded_attempt_leaves_no_current_rows(self) -> None:
        """A failed attempt that a retry re-ran: its rows are not current, in every disposition."""
        expected = {
            "append": [(1, 2), (2, 5)],
            "merge": [(1, 2), (2, 5)],
            "replace": [(2, 5)],  # the newest complete run
            "history": [(1, 2, log_version(2), None, True), (2, 5, log_version(3), None, True)],
        }
        for disposition in DISPOSITIONS:
            spec = self.spec(disposition)
            loader, name = self._open(spec)
            failed = [{"id": 1, "value": 1}, {"id": 3, "value": 3}]
            self.deliver(loader, name, Delivery("r0", 0, log_version(1), failed))
            self.deliver(loader, name, Delivery("r0-retry0", 0, log_version(2), [{"id": 1, "value": 2}]))
            self.deliver(loader, name, Delivery("r1", 0, log_version(3), [{"id": 2, "value": 5}]))
            rows = loader.current_rows(name, RunView(superseded=frozenset({"r0"})))
            assert _project(rows, spec) == expected[disposition], disposition

    @pytest.mark.parametrize("disposition", DISPOSITIONS)
    def test_a_parent_batch_delivered_after_its_replay_adds_nothing_and_loses_nothing(
        self, disposition: Disposition
    ) -> None:
        """A replayed batch first (its parent's is not there yet to remove), then the parent's, late, then the
        replayed batch again (a redelivery, which removes the parent's once more): one copy of the record stays.
        The minimal case the interleaving test found on ClickHouse, where a merge between the parent's insert and
        the removal had kept only the parent's copy, and the removal then took the record away."""
        extraction = Extraction([self._run(1, [{"id": 1, "value": 1}]), self._run(2, [{"id": 2, "value": 2}])])
        earlier, parent, replay = self.deliveries(extraction, replays=[1], redeliveries=[])
        order = [replay, parent, earlier, replay]
        self.check(self.spec(disposition), extraction, order, self.view(order))

    @pytest.mark.parametrize("disposition", DISPOSITIONS)
    def test_any_interleaving_ends_at_the_newest_version(self, disposition: Disposition) -> None:
        """Any runs, replays, redeliveries and deletes, delivered in any order: the reference model's rows."""
        hypothesis = pytest.importorskip("hypothesis")
        st = hypothesis.strategies
        record = st.fixed_dictionaries({"id": st.integers(0, 3), "value": st.integers(0, 99), "deleted": st.booleans()})
        batch = st.lists(record, min_size=1, max_size=4)
        runs = st.lists(st.lists(batch, min_size=1, max_size=2), min_size=1, max_size=4)
        spec = self.spec(disposition)

        @hypothesis.settings(  # type: ignore[untyped-decorator]
            max_examples=self.max_examples,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            database=None,
        )
        @hypothesis.given(  # type: ignore[untyped-decorator]
            runs=runs,
            replays=st.lists(st.integers(0, 3), max_size=2),
            redeliveries=st.lists(st.integers(0, 20), max_size=3),
            data=st.data(),
        )
        def interleaving(
            runs: list[list[list[Record]]], replays: list[int], redeliveries: list[int], data: Any
        ) -> None:
            position, extracted = 1, []
            for run in runs:
                extracted.append(self._run(position, *run))
                position += len(run)
            extraction = Extraction(extracted)
            order = data.draw(st.permutations(self.deliveries(extraction, replays, redeliveries)))
            self.check(spec, extraction, order, self.view(order))

        interleaving()


class LineageLoaderContract:
    """What a loader that knows which batch wrote each row must do (`jetl.protocols.LineageLoader`): count rows by
    run, remove a batch (idempotently, every part of it), write a replay's shadow apart from the destination, and
    diff the shadow against its parent run, whole rows matched (no key is configured here).

    Method to provide: `new_loader(name)`, a fresh loader for pipeline `name` writing where nothing else does; the
    suite binds the schema (`check_schema`) as a Pipeline does.
    """

    def new_loader(self, name: str) -> Loader:
        """A fresh loader for pipeline `name`."""
        raise NotImplementedError("provide new_loader(name)")

    def _open(self) -> tuple[LineageLoader, str]:
        name = f"l{uuid.uuid4().hex[:12]}"
        loader = self.new_loader(name)
        assert isinstance(loader, LineageLoader), f"{loader!r} is not a jetl.protocols.LineageLoader"
        check = getattr(loader, "check_schema", None)
        if callable(check):
            check(VersionedItem)
        return loader, name

    @staticmethod
    def _load(loader: Any, pipeline: str, run_id: str, seq: int, records: list[Record], part: str = "") -> None:
        bid = batch_id(run_id, seq)
        ctx = LoadContext(
            pipeline,
            run_id,
            bid,
            schema=VersionedItem,
            part_id=f"{bid}-{part}" if part else "",
            version=log_version(seq + 1),
        )
        assert isinstance(loader, Loader)
        loader.load(copy.deepcopy(records), ctx)

    @staticmethod
    def _rows(n: int, start: int = 0) -> list[Record]:
        return [{"id": i, "value": i * 10} for i in range(start, start + n)]

    def test_rows_by_run_and_remove_batch(self) -> None:
        """Rows are counted per run; removing a batch removes exactly its rows, every part, and twice is once."""
        loader, name = self._open()
        self._load(loader, name, "r1", 0, self._rows(3))
        self._load(loader, name, "r1", 1, self._rows(2, 3), part="part0")
        self._load(loader, name, "r1", 1, self._rows(2, 5), part="part1")
        self._load(loader, name, "r2", 0, self._rows(4))
        assert loader.rows_by_run(name) == {"r1": 7, "r2": 4}
        loader.remove_batch(name, batch_id("r1", 1))
        loader.remove_batch(name, batch_id("r1", 1))
        assert loader.rows_by_run(name) == {"r1": 3, "r2": 4}

    def test_a_shadow_is_apart_and_diffs_against_its_parent(self) -> None:
        """A replay's shadow leaves the destination as it was; its diff against the parent run matches whole rows."""
        loader, name = self._open()
        self._load(loader, name, "r1", 0, self._rows(4))
        self._load(loader, name, "r2", 0, self._rows(2, 10))
        shadow = loader.shadow("r1x")
        changed = self._rows(4)
        changed[0]["value"] = -1  # one row changed (one removed, one added), one row new
        self._load(shadow, name, "r1x", 0, [*changed, {"id": 99, "value": 0}])
        assert loader.rows_by_run(name) == {"r1": 4, "r2": 2}
        d = loader.diff(name, "r1", "r1x")
        assert (d.added, d.removed, d.unchanged) == (2, 1, 3)
        loader.drop_shadow(name, "r1x")
        loader.drop_shadow(name, "r1x")  # idempotent
        assert loader.rows_by_run(name) == {"r1": 4, "r2": 2}
