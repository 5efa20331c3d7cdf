"""`jetl.__all__` lists exactly the public names the package exports (after httpx's test_exported_members)."""

from __future__ import annotations

import ast
import sys
import types
from pathlib import Path

import pytest

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
        "Retry",
        "Limits",
        # what a connector written outside jetl implements
        "Check",
        "Partition",
    ):
        assert name in jetl.__all__, name


def test_the_type_checking_imports_are_the_exports() -> None:
    """Type checkers read the `TYPE_CHECKING` imports, the package `_EXPORTS`: they must name the same things."""
    tree = ast.parse(Path(jetl.__file__).read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test))
    imported: dict[str, str] = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.module, ast.unparse(node)
        for alias in node.names:
            assert alias.asname == alias.name, f"{alias.name}: import it `as {alias.name}`, so it is re-exported"
            imported[alias.name] = node.module
    assert imported == jetl._EXPORTS


def test_a_connector_without_its_extra_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in [m for m in sys.modules if m == "httpx" or m.startswith(("httpx.", "jetl.extractors.http"))]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "httpx", None)  # as if httpx were not installed
    monkeypatch.delitem(vars(jetl), "HttpExtractor", raising=False)
    with pytest.raises(ImportError, match=r"jetl\.HttpExtractor needs the 'http' extra .*pip install 'jetl\[http\]'"):
        jetl.HttpExtractor  # noqa: B018
    assert jetl.FileExtractor is not None  # connectors without an extra still load
