"""`jetl.__all__` lists exactly the public names the package exports (after httpx's test_exported_members)."""

from __future__ import annotations

import types

import jetl


def public_members() -> set[str]:
    # dir() includes the connectors that are imported lazily, on first use
    return {
        name
        for name in dir(jetl)
        if (not name.startswith("_") or name == "__version__") and not isinstance(getattr(jetl, name), types.ModuleType)
    }


def test_all_matches_the_exported_names() -> None:
    assert set(jetl.__all__) == public_members()


def test_all_is_sorted_without_duplicates() -> None:
    assert jetl.__all__ == sorted(set(jetl.__all__))


def test_every_listed_name_resolves() -> None:
    for name in jetl.__all__:
        assert getattr(jetl, name) is not None, name


def test_connectors_are_exported() -> None:
    for name in (
        "FileExtractor",
        "LambdaTransformer",
        "TypeTransformer",
        "ColumnTransformer",
        "FilterTransformer",
        "DedupeTransformer",
        "ClickHouseLoader",
        "ConsoleLoader",
        "FileLoader",
        "HttpExtractor",
        "DatabaseExtractor",
        # the HTTP extractor's helpers: a user writes `from jetl import BearerAuth, NextUrlPagination, Incremental`
        "ApiKeyAuth",
        "BasicAuth",
        "BearerAuth",
        "CursorPagination",
        "Incremental",
        "LinkHeaderPagination",
        "NextUrlPagination",
        "OffsetPagination",
        "PageNumberPagination",
    ):
        assert name in jetl.__all__, name
