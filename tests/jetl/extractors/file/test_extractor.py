"""FileExtractor: formats, compression, globs, chunking, malformed input and the loaded-files cursor."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from jetl import ExtractContext, FileExtractor
from jetl.errors import ConfigError, TransientError
from jetl.protocols import Check, Chunk
from jetl.settings import JetlSettings


def ctx(cursor: dict[str, Any] | None = None, force: bool = False) -> ExtractContext:
    return ExtractContext(pipeline="files", run_id="r1", cursor=cursor, force=force)


async def collect(ex: FileExtractor, context: ExtractContext | None = None) -> list[Chunk]:
    return [c async for c in ex.extract(context or ctx())]


def records(chunks: list[Chunk]) -> list[dict[str, Any]]:
    return [r for c in chunks for r in c.records]


def rejected(chunks: list[Chunk]) -> list[tuple[str, str]]:
    return [r for c in chunks for r in c.rejected]


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


ROWS = [{"id": i, "name": f"n{i}"} for i in range(1, 8)]


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("a.jsonl", lambda p, b: p.write_bytes(b)),
        ("a.jsonl.gz", lambda p, b: p.write_bytes(gzip.compress(b))),
        ("a.ndjson.zst", lambda p, b: p.write_bytes(zstandard.ZstdCompressor().compress(b))),
    ],
)
async def test_jsonl_plain_gzip_zstd(tmp_path: Path, name: str, write: Any) -> None:
    write(tmp_path / name, jsonl(ROWS))
    chunks = await collect(FileExtractor(tmp_path / name, chunk_size=3))
    assert records(chunks) == ROWS
    assert [len(c.records) for c in chunks] == [3, 3, 1]
    assert chunks[0].origins == [f"{tmp_path / name}:{n}" for n in (1, 2, 3)]


@pytest.mark.parametrize("compress", [None, "gzip", "zstd"])
async def test_csv_with_types_and_compression(tmp_path: Path, compress: str | None) -> None:
    text = b"id,price,note\n1,9.50,a\n2,,b\n3,1.25,\n"
    name = "p.csv"
    if compress == "gzip":
        text, name = gzip.compress(text), "p.csv.gz"
    elif compress == "zstd":
        text, name = zstandard.ZstdCompressor().compress(text), "p.csv.zst"
    (tmp_path / name).write_bytes(text)
    ex = FileExtractor(tmp_path / name, csv_types={"id": int, "price": Decimal})
    got = records(await collect(ex))
    assert got == [
        {"id": 1, "price": Decimal("9.50"), "note": "a"},
        {"id": 2, "price": None, "note": "b"},
        {"id": 3, "price": Decimal("1.25"), "note": ""},
    ]


async def test_csv_untyped_values_stay_strings_and_bom_is_dropped(tmp_path: Path) -> None:
    (tmp_path / "b.csv").write_bytes(b"\xef\xbb\xbfid;name\n1;x\n")
    got = records(await collect(FileExtractor(tmp_path / "b.csv", csv_delimiter=";")))
    assert got == [{"id": "1", "name": "x"}]


async def test_csv_bad_row_rejected_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("id,qty\n1,2\n2\n3,x\n4,5\n")
    chunks = await collect(FileExtractor(path, csv_types={"qty": int}))
    assert records(chunks) == [{"id": "1", "qty": 2}, {"id": "4", "qty": 5}]
    bad = rejected(chunks)
    assert [origin for origin, _ in bad] == [f"{path}:3", f"{path}:4"]
    assert "expected 2 fields, got 1" in bad[0][1]
    assert "column 'qty'" in bad[1][1] and "'x'" in bad[1][1]


async def test_csv_duplicate_header_rejects_the_file(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("id,id\n1,2\n")
    chunks = await collect(FileExtractor(path))
    assert records(chunks) == []
    assert rejected(chunks)[0][0] == f"{path}:1"


async def test_jsonl_malformed_line_rejected_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"id": 1}\n\n{"id": 2\n[1, 2]\n{"id": 3}, {"id": 4}\n{"id": 5}\n')
    chunks = await collect(FileExtractor(path, chunk_size=100))
    assert records(chunks) == [{"id": 1}, {"id": 5}]
    assert chunks[0].origins == [f"{path}:1", f"{path}:6"]
    bad = rejected(chunks)
    assert [origin for origin, _ in bad] == [f"{path}:3", f"{path}:4", f"{path}:5"]
    assert "malformed JSON" in bad[0][1]
    assert "expected a JSON object, got list" in bad[1][1]


async def test_raw_json_passes_lines_unparsed_for_the_transformer_to_read(tmp_path: Path) -> None:
    """With ExtractContext.raw_json (what the extractor service asks for) JSON lines are not parsed: each chunk
    carries the lines themselves, numbered, and the same lines read back as the parsed records plus the rejects."""
    from jetl.messages.wire import encode_records, read_records

    path = tmp_path / "m.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": 1}\n\n{"id": 2\n[1, 2]\n  \r\n{"id": 3}, {"id": 4}\n{"id": 5}')
    raw_ctx = ExtractContext(pipeline="files", run_id="r1", raw_json=True)
    chunks = await collect(FileExtractor(path, chunk_size=100), raw_ctx)
    (chunk,) = chunks
    assert chunk.records == [] and chunk.raw is not None and chunk.count == 5  # no BOM, no blank lines
    assert chunk.origin_list() == [f"{path}:{n}" for n in (1, 3, 4, 6, 7)]
    got, positions, unread = read_records(encode_records(chunk.raw), chunk.count)
    assert got == [{"id": 1}, {"id": 5}] and positions == [0, 4]
    assert [(u.position, u.value) for u in unread] == [(1, '{"id": 2'), (2, [1, 2]), (3, '{"id": 3}, {"id": 4}')]

    clean = tmp_path / "c.jsonl"
    clean.write_bytes(jsonl(ROWS))
    chunks = await collect(FileExtractor(clean, chunk_size=3), raw_ctx)
    assert [c.count for c in chunks] == [3, 3, 1] and chunks[1].origin_runs == [(f"{clean}:", 4, 3)]
    assert [r for c in chunks for r in read_records(encode_records(c.items), c.count)[0]] == ROWS
    # selecting columns needs the records: those chunks are parsed as without raw_json
    chunks = await collect(FileExtractor(clean, chunk_size=10, columns=["id"]), raw_ctx)
    assert records(chunks) == [{"id": r["id"]} for r in ROWS] and chunks[0].raw is None


async def test_truncated_gzip_rejects_the_rest_but_keeps_what_was_read(tmp_path: Path) -> None:
    blob = gzip.compress(jsonl([{"id": i, "pad": "x" * 50} for i in range(2000)]))
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(blob[: len(blob) // 2])
    chunks = await collect(FileExtractor(path, chunk_size=500))
    got = records(chunks)
    assert 0 < len(got) < 2000
    assert [r["id"] for r in got] == list(range(len(got)))
    assert len(rejected(chunks)) == 1 and "cannot read past" in rejected(chunks)[0][1]


async def test_parquet_read_in_bounded_batches(tmp_path: Path) -> None:
    table = pa.table({"id": list(range(25)), "v": [f"v{i}" for i in range(25)]})
    path = tmp_path / "x.parquet"
    pq.write_table(table, path, row_group_size=10)
    ex = FileExtractor(path, chunk_size=4, columns=["id"])
    chunks = await collect(ex)
    assert all(len(c.records) <= 4 for c in chunks)
    assert records(chunks) == [{"id": i} for i in range(25)]
    assert chunks[1].origins == [f"{path}:{n}" for n in (5, 6, 7, 8)]
    assert chunks[-1].position == {"file": str(path), "row": 25}


async def test_corrupt_parquet_is_rejected_not_raised(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    chunks = await collect(FileExtractor(tmp_path / "bad.parquet"))
    assert records(chunks) == [] and "unreadable Parquet" in rejected(chunks)[0][1]


def test_parquet_with_outer_compression_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="Parquet compresses inside"):
        FileExtractor("x.parquet", format="parquet", compression="gzip")


async def test_glob_folder_and_mixed_formats(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "1.jsonl").write_bytes(jsonl([{"id": 1}]))
    (tmp_path / "in" / "2.csv").write_text("id\n2\n")
    pq.write_table(pa.table({"id": [3]}), tmp_path / "in" / "3.parquet")
    (tmp_path / "in" / "skip.txt").write_text("no")
    got = records(await collect(FileExtractor(tmp_path / "in" / "[0-9].*", csv_types={"id": int})))
    assert got == [{"id": 1}, {"id": 2}, {"id": 3}]
    with pytest.raises(ConfigError, match="cannot tell the format"):
        await collect(FileExtractor(tmp_path / "in"))


async def test_loaded_files_skipped_unless_forced(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(jsonl([{"id": 1}]))
    ex = FileExtractor(tmp_path / "*.jsonl")
    assert records(await collect(ex)) == [{"id": 1}]
    cursor = ex.next_cursor()
    assert cursor is not None
    json.dumps(cursor)  # the cursor is stored as JSON
    (tmp_path / "b.jsonl").write_bytes(jsonl([{"id": 2}]))
    again = FileExtractor(tmp_path / "*.jsonl")
    assert records(await collect(again, ctx(cursor))) == [{"id": 2}]
    assert len(again.next_cursor()["files"]) == 2  # type: ignore[index]
    forced = FileExtractor(tmp_path / "*.jsonl")
    assert records(await collect(forced, ctx(cursor, force=True))) == [{"id": 1}, {"id": 2}]


async def test_no_matching_files_is_an_error_only_when_run(tmp_path: Path) -> None:
    ex = FileExtractor(tmp_path / "missing" / "*.csv")  # constructing touches nothing
    with pytest.raises(TransientError, match="no files match"):
        await collect(ex)


def test_bad_options_fail_at_construction() -> None:
    with pytest.raises(ConfigError):
        FileExtractor("x", chunk_size=0)
    with pytest.raises(ConfigError):
        FileExtractor("x", csv_types={"a": "int"})  # type: ignore[dict-item]


def test_check_counts_matching_files_and_warns_when_there_are_none(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"id": 1}\n')
    (tmp_path / "b.jsonl").write_text('{"id": 2}\n')
    pattern = str(tmp_path / "*.jsonl")
    assert FileExtractor(pattern).check(JetlSettings()) == Check("ok", f"2 file(s) match {pattern}")
    missing = str(tmp_path / "*.csv")
    assert FileExtractor(missing).check(JetlSettings()) == Check("warn", f"no file matches {missing} yet")


async def test_the_cursor_is_a_watermark_and_a_bounded_set_however_many_files_were_loaded(tmp_path: Path) -> None:
    import os

    day = 86400
    for i in range(40):  # forty files, a day apart
        f = tmp_path / f"{i:02d}.jsonl"
        f.write_bytes(jsonl([{"id": i}]))
        os.utime(f, (1_700_000_000 + i * day, 1_700_000_000 + i * day))
    ex = FileExtractor(tmp_path / "*.jsonl", cursor_grace_s=3 * day, cursor_max_files=2)
    assert len(records(await collect(ex))) == 40
    cursor = ex.next_cursor()
    assert cursor is not None and len(cursor["files"]) <= 2  # not forty
    assert cursor["watermark"] > 1_700_000_000 + 36 * day

    newer = tmp_path / "40.jsonl"
    newer.write_bytes(jsonl([{"id": 40}]))
    late = tmp_path / "late.jsonl"  # copied in later with an old mtime kept: older than the watermark
    late.write_bytes(jsonl([{"id": -1}]))
    os.utime(late, (1_700_000_000, 1_700_000_000))
    changed = tmp_path / "39.jsonl"  # the newest file rewritten (not appended to): a new key, so it loads again
    changed.write_bytes(jsonl([{"id": 391}, {"id": 390}]))
    again = FileExtractor(tmp_path / "*.jsonl", cursor_grace_s=3 * day, cursor_max_files=2)
    got = sorted(r["id"] for r in records(await collect(again, ctx(cursor))))
    assert got == [40, 390, 391]  # nothing of the forty again, nothing older than the watermark
    assert len(again.next_cursor()["files"]) <= 2  # type: ignore[index]


async def test_a_cursor_of_the_old_form_lists_its_files_and_is_bounded_after_the_next_run(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(jsonl([{"id": 1}]))
    first = FileExtractor(tmp_path / "*.jsonl")
    await collect(first)
    old_form = {"files": first.next_cursor()["files"]}  # type: ignore[index]
    (tmp_path / "b.jsonl").write_bytes(jsonl([{"id": 2}]))
    again = FileExtractor(tmp_path / "*.jsonl")
    assert records(await collect(again, ctx(old_form))) == [{"id": 2}]
    assert again.next_cursor()["watermark"] is not None  # type: ignore[index]
