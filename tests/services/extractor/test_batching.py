"""Batches cut from chunks that carry log versions (`Chunk.version`): whatever the cut (by count, across chunks, by
bytes), every record's version in its batch (`Batch.version` + its index) keeps the order of the versions its
chunk gave, and no two records share one."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from jetl.protocols import Chunk
from jetl_extractor.batching import Batcher


def cut(chunks: list[Chunk], batch_size: int, max_payload: int = 1 << 20) -> list[tuple[int | None, list[Any]]]:
    """(version, records) of each batch the Batcher sends."""
    sent: list[tuple[int | None, list[Any]]] = []

    async def send(body: bytes, *rest: Any) -> None:
        sent.append((rest[-1], orjson.loads(body)))

    async def go() -> None:
        b = Batcher(batch_size, lambda: max_payload, send, lambda: None)
        for c in chunks:
            await b.add(c)
        await b.flush(final=True)

    asyncio.run(go())
    return sent


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=12),
    gaps=st.lists(st.integers(0, 1000), min_size=12, max_size=12),
    batch_size=st.integers(1, 10),
)
def test_versioned_chunks_cut_keep_the_log_order(sizes: list[int], gaps: list[int], batch_size: int) -> None:
    chunks, version, n = [], 5, 0
    for size, gap in zip(sizes, gaps, strict=False):
        version += gap
        chunks.append(Chunk([{"i": n + k} for k in range(size)], version=version))
        n += size
        version += size
    sent = cut(chunks, batch_size)
    assert [r["i"] for _, records in sent for r in records] == list(range(n))
    versions = [v + k for v, records in sent for k in range(len(records)) if v is not None]
    assert len(versions) == n and versions == sorted(set(versions))
    # the first record of each batch has exactly the version its chunk gave it
    given_versions = {r["i"]: c.version + k for c in chunks if c.version is not None for k, r in enumerate(c.records)}
    assert all(v == given_versions[records[0]["i"]] for v, records in sent)


def test_batches_of_chunks_without_versions_have_none() -> None:
    assert [v for v, _ in cut([Chunk([{"i": 1}, {"i": 2}]), Chunk([{"i": 3}])], 2)] == [None, None]


def test_a_batch_cut_again_by_bytes_numbers_its_parts_from_its_version() -> None:
    chunks = [Chunk([{"i": k, "pad": "x" * 300} for k in range(6)], version=100)]
    sent = cut(chunks, 6, max_payload=4096 + 1200)
    assert len(sent) > 1
    assert [v for v, _ in sent] == [100 + sum(len(r) for _, r in sent[:j]) for j in range(len(sent))]
