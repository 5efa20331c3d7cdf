"""FileExtractor partitions: newline-aligned byte ranges put every line of a file in exactly one partition."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from jetl.errors import TerminalError
from jetl.extractors.file import FileExtractor
from jetl.protocols import ExtractContext, Partition, Unreadable


def _read_all(ex: FileExtractor, ctx: ExtractContext) -> tuple[int, list[str], list[str]]:
    async def go() -> tuple[int, list[str], list[str]]:
        parts = ex.partitions(ctx)
        ids: list[str] = []
        origins: list[str] = []
        for part in parts:
            async for chunk in ex.extract_partition(ctx, part):
                ids.extend(str(r["id"]) for r in chunk.records)
                origins.extend(chunk.origin_list())
        return len(parts), ids, origins

    return asyncio.run(go())


@pytest.mark.parametrize("size", [1, 7, 50, 333, 10_000])
def test_jsonl_byte_ranges_hold_every_line_once_with_its_line_number(tmp_path: Path, size: int) -> None:
    src = tmp_path / "f.jsonl"
    src.write_text("".join(f'{{"id": {i}, "pad": "{"x" * (i % 13)}"}}\n' for i in range(500)))
    ex = FileExtractor(src, partition_bytes=size)
    n, ids, origins = _read_all(ex, ExtractContext(pipeline="p", run_id="r"))
    assert ids == [str(i) for i in range(500)]
    assert origins == [f"{src}:{i}" for i in range(1, 501)]
    assert (n > 1) == (size < src.stat().st_size)
    assert ex.next_cursor()["files"] == [FileExtractor._key(src)]  # type: ignore[index]


def test_csv_byte_ranges_keep_the_header_and_line_numbers(tmp_path: Path) -> None:
    src = tmp_path / "f.csv"
    src.write_text("id,name\n" + "".join(f"{i},n{i}\n" for i in range(300)))
    n, ids, origins = _read_all(FileExtractor(src, partition_bytes=200), ExtractContext(pipeline="p", run_id="r"))
    assert n > 5
    assert ids == [str(i) for i in range(300)]
    assert origins == [f"{src}:{i}" for i in range(2, 302)]


def test_a_file_changed_after_planning_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "f.jsonl"
    src.write_text('{"id": 1}\n' * 100)
    ex = FileExtractor(src, partition_bytes=100)
    ctx = ExtractContext(pipeline="p", run_id="r")
    part = ex.partitions(ctx)[0]
    src.write_text('{"id": 2}\n' * 90)  # rewritten (a file appended to is read as planned: the test below)

    async def go() -> None:
        async for _ in ex.extract_partition(ctx, part):
            pass

    with pytest.raises(Exception, match="changed since its run was planned"):
        asyncio.run(go())


def test_a_csv_with_line_breaks_in_quoted_fields_loads_every_row_exactly(tmp_path: Path) -> None:
    src = tmp_path / "f.csv"
    rows = [(i, f'"note {i}\nsecond line, ""quoted""\n"' if i % 7 == 0 else f"n{i}") for i in range(300)]
    src.write_text("id,note\n" + "".join(f"{i},{note}\n" for i, note in rows))
    ex = FileExtractor(src, partition_bytes=200)

    async def go() -> tuple[int, list[dict[str, str]]]:
        parts = ex.partitions(ExtractContext(pipeline="p", run_id="r"))
        out = []
        for part in parts:
            async for chunk in ex.extract_partition(ExtractContext(pipeline="p", run_id="r"), part):
                assert not chunk.rejected, chunk.rejected
                out.extend(chunk.records)
        return len(parts), out

    n, records = asyncio.run(go())
    assert n == 1  # a range would start inside a quoted field: the file is read whole
    assert [r["id"] for r in records] == [str(i) for i in range(300)]
    assert records[7]["note"] == 'note 7\nsecond line, "quoted"\n'


def test_a_csv_with_quotes_that_hold_no_line_break_is_still_split(tmp_path: Path) -> None:
    src = tmp_path / "f.csv"
    src.write_text("id,name\n" + "".join(f'{i},"n, ""{i}"""\n' for i in range(300)))
    n, ids, _ = _read_all(FileExtractor(src, partition_bytes=200), ExtractContext(pipeline="p", run_id="r"))
    assert n > 5
    assert ids == [str(i) for i in range(300)]


def test_a_symlink_out_of_the_folder_or_glob_is_not_listed_and_its_partition_is_refused(tmp_path: Path) -> None:
    inputs, outside = tmp_path / "in", tmp_path / "secret.jsonl"
    inputs.mkdir()
    outside.write_text('{"id": 666}\n')
    (inputs / "a.jsonl").write_text('{"id": 1}\n')
    (inputs / "link.jsonl").symlink_to(outside)
    (inputs / "inner.jsonl").symlink_to(inputs / "a.jsonl")  # a link that stays inside is still listed
    for path in (inputs, inputs / "*.jsonl", f"{inputs}/**/*.jsonl"):
        ex = FileExtractor(str(path))
        assert [p.name for p in ex.files()] == ["a.jsonl", "inner.jsonl"], path
    assert FileExtractor(inputs / "link.jsonl").files() == [inputs / "link.jsonl"]  # named itself: the user's choice
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.jsonl").write_text('{"id": 7}\n')
    (inputs / "sub").symlink_to(elsewhere)  # a linked folder leads out too
    assert FileExtractor(f"{inputs}/*/*.jsonl").files() == []
    assert [p.name for p in FileExtractor(f"{inputs}/**/*.jsonl").files()] == ["a.jsonl", "inner.jsonl"]
    ex = FileExtractor(inputs / "*.jsonl")
    forged = Partition({"files": [[str(inputs / "link.jsonl"), FileExtractor._key(inputs / "link.jsonl")]]})

    async def go() -> None:
        async for _ in ex.extract_partition(ExtractContext(pipeline="p", run_id="r"), forged):
            pass

    with pytest.raises(TerminalError, match="refused") as refused:
        asyncio.run(go())
    assert "link" not in str(refused.value) and "secret" not in str(refused.value)


def test_a_listed_file_replaced_by_a_link_out_is_refused_though_the_listing_is_kept(tmp_path: Path) -> None:
    inputs, outside = tmp_path / "in", tmp_path / "secret.jsonl"
    inputs.mkdir()
    outside.write_text('{"id": 666}\n')
    src = inputs / "a.jsonl"
    src.write_text('{"id": 1}\n')
    ex = FileExtractor(inputs / "*.jsonl")
    ctx = ExtractContext(pipeline="p", run_id="r")

    async def read(part: Partition) -> list[int]:
        return [r["id"] async for chunk in ex.extract_partition(ctx, part) for r in chunk.records]

    assert asyncio.run(read(ex.partitions(ctx)[0])) == [1]  # listed, and the listing kept
    src.unlink()
    src.symlink_to(outside)  # someone who may write the input folder, not read the secret
    forged = Partition({"files": [[str(src), FileExtractor._key(src)]]})
    with pytest.raises(TerminalError, match="refused"):
        asyncio.run(read(forged))


def _stray(tmp_path: Path, closing: str) -> tuple[Path, list[str]]:
    """A CSV of 122 rows where row 30 opens a quote it never closes, and row 75 holds `closing`."""
    src = tmp_path / "stray.csv"
    lines = []
    for i in range(1, 123):
        lines.append(f'{i},"bad name,1.5' if i == 30 else f"{i},{closing},2.0" if i == 75 else f"{i},n{i},1.5")
    src.write_text("id,name,price\n" + "".join(f"{line}\n" for line in lines))
    return src, lines


@pytest.mark.parametrize("closing", ['he said "hi"', 'name"', "no quote"])
@pytest.mark.parametrize("partition_bytes", [100, 1 << 20])
def test_a_stray_quote_swallows_no_row_each_line_is_a_record_or_a_dead_letter_with_its_body(
    tmp_path: Path, closing: str, partition_bytes: int
) -> None:
    src, lines = _stray(tmp_path, closing)
    ex = FileExtractor(src, partition_bytes=partition_bytes)
    ctx = ExtractContext(pipeline="p", run_id="r")

    async def go() -> tuple[list[dict[str, str]], list[str], list[tuple[str, str]]]:
        records, origins, rejected = [], [], []
        for part in ex.partitions(ctx):
            async for chunk in ex.extract_partition(ctx, part):
                records.extend(chunk.records)
                origins.extend(chunk.origin_list())
                rejected.extend(chunk.rejected)
        return records, origins, rejected

    records, origins, rejected = asyncio.run(go())
    assert len(records) + len(rejected) == 122  # every row of the file is counted: none vanished inside another
    assert sorted([*origins, *(o for o, _ in rejected)], key=lambda o: int(o.rsplit(":", 1)[1])) == [
        f"{src}:{n}" for n in range(2, 124)
    ]
    assert all("\n" not in r["name"] for r in records)  # no row holds the lines after it
    bad = {o: u for o, u in ((u[0], u) for u in rejected)}
    assert f"{src}:31" in bad and "stray quote" in bad[f"{src}:31"][1]
    for origin, u in bad.items():  # each dead letter keeps its line as read
        assert isinstance(u, Unreadable) and u.input == lines[int(origin.rsplit(":", 1)[1]) - 2]
    assert {r["id"] for r in records} >= {str(i) for i in range(31, 75)}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("partition_bytes", [64, 1 << 20])
def test_a_file_appended_to_during_a_run_is_read_as_planned_and_the_next_run_reads_only_the_rest(
    tmp_path: Path, fmt: str, partition_bytes: int
) -> None:
    src = tmp_path / f"grow.{fmt}"
    head = "id,name\n" if fmt == "csv" else ""

    def line(i: int) -> str:
        return f"{i},n{i}\n" if fmt == "csv" else f'{{"id": {i}, "name": "n{i}"}}\n'

    src.write_text(head + "".join(line(i) for i in range(40)))
    ex = FileExtractor(src, partition_bytes=partition_bytes)

    async def run(cursor: dict[str, object] | None, append: range | None) -> tuple[list[str], list[str], object]:
        ctx = ExtractContext(pipeline="p", run_id="r", cursor=cursor)
        parts = ex.partitions(ctx)
        if append is not None:  # a writer appends while the run reads
            with src.open("a") as fh:
                fh.write("".join(line(i) for i in append))
        ids, origins = [], []
        for part in parts:
            async for chunk in ex.extract_partition(ctx, part):
                ids.extend(str(r["id"]) for r in chunk.records)
                origins.extend(chunk.origin_list())
                assert not chunk.rejected, chunk.rejected
        return ids, origins, ex.next_cursor()

    first, _, cursor = asyncio.run(run(None, range(40, 70)))
    assert first == [str(i) for i in range(40)]  # as planned: not what was appended meanwhile
    second, origins, cursor = asyncio.run(run(cursor, None))  # type: ignore[arg-type]
    assert second == [str(i) for i in range(40, 70)]  # only the rest, with its own line numbers
    skip = 2 if fmt == "csv" else 1
    assert origins == [f"{src}:{i + skip}" for i in range(40, 70)]
    assert asyncio.run(run(cursor, None))[0] == []  # type: ignore[arg-type]
    src.write_text(head + "".join(line(i) for i in range(100, 180)))  # rewritten, larger: read whole again
    assert asyncio.run(run(cursor, None))[0] == [str(i) for i in range(100, 180)]  # type: ignore[arg-type]
