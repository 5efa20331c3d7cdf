"""Write the API reference of jetl's public names (`jetl.__all__`) to docs/reference/api.md.

    uv run python docs/reference/generate.py           # write it
    uv run python docs/reference/generate.py --check   # exit 1 when the committed file is out of date

Each name with its signature and docstring, and for a class its public methods and properties with their first
docstring line: the text is the code's own, so the reference cannot say what the code does not.
"""

from __future__ import annotations

import inspect
import itertools
import re
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "api.md"

GROUPS = [
    (
        "Pipelines and settings",
        [
            "Pipeline",
            "Contract",
            "Cron",
            "JetlSettings",
            "discover",
            "get_pipeline",
            "get_pipeline_registry",
            "clear_registry",
        ],
    ),
    (
        "Plugin contracts",
        [
            "Extractor",
            "Transformer",
            "Loader",
            "Chunk",
            "Unreadable",
            "ExtractContext",
            "LoadContext",
            "Check",
            "Partition",
        ],
    ),
    (
        "Extractors",
        [
            "FileExtractor",
            "HttpExtractor",
            "DatabaseExtractor",
            "PostgresCDCExtractor",
            "Incremental",
            "BearerAuth",
            "BasicAuth",
            "ApiKeyAuth",
            "Retry",
            "Limits",
            "PageNumberPagination",
            "OffsetPagination",
            "CursorPagination",
            "NextUrlPagination",
            "LinkHeaderPagination",
        ],
    ),
    (
        "Transformers",
        [
            "TypeTransformer",
            "ColumnTransformer",
            "ArrowExpression",
            "FilterTransformer",
            "LambdaTransformer",
            "DedupeTransformer",
        ],
    ),
    (
        "Loaders",
        [
            "FileLoader",
            "ClickHouseLoader",
            "PostgresLoader",
            "IcebergLoader",
            "ConsoleLoader",
            "Deletes",
            "LowCardinality",
            "Timezone",
        ],
    ),
    ("Messages", ["Batch", "DeadLetter", "RunRequest"]),
    (
        "Errors",
        [
            "JetlError",
            "TransientError",
            "TerminalError",
            "ConfigError",
            "DiscoveryError",
            "RecordError",
            "RecordIssue",
            "DestinationUnavailable",
        ],
    ),
]


def _clean(text: str) -> str:
    """A signature without what changes from run to run (object addresses)."""
    return re.sub(r" at 0x[0-9a-f]+", "", text)


def _signature(obj: Any, name: str) -> str:
    try:
        return _clean(f"{name}{inspect.signature(obj)}")
    except (TypeError, ValueError):
        return name


def _type(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return re.sub(r"\b(?:typing|pathlib|datetime|jetl(?:\.\w+)*)\.", "", str(annotation))


def _attribute_docs(cls: type) -> dict[str, str]:
    """The docstrings written under a class's attributes (`name: T` then a string), from its source, base first."""
    import ast
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith("jetl"):
            continue
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0]
        except (OSError, TypeError, IndexError):
            continue
        statements = getattr(body, "body", [])
        for st, after in itertools.pairwise(statements):
            text = after.value.value if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) else None
            if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name) and isinstance(text, str):
                docs[st.target.id] = " ".join(inspect.cleandoc(text).split())
    return docs


def _fields(model: Any) -> list[str]:
    """A pydantic model's fields (its constructor is keyword-only on them), each with its docstring."""
    from pydantic_core import PydanticUndefined

    written = _attribute_docs(model)
    lines = []
    for name, f in model.model_fields.items():
        default = "" if f.default is PydanticUndefined else f" = {_clean(repr(f.default))}"
        if f.default_factory is not None:
            default = " = ..."
        described = f.description or written.get(name, "")
        text = f": {' '.join(described.split())}" if described else ""
        lines.append(f"- `{name}: {_type(f.annotation)}{default}`{text}")
    return lines


def _doc(obj: Any) -> str:
    return inspect.cleandoc(obj.__doc__ or "").strip()


def _members(cls: type) -> list[str]:
    lines = []
    for name, member in sorted(vars(cls).items()):
        if name.startswith("_") or name.startswith("model_"):
            continue
        if isinstance(member, property):
            kind, target = "property", member.fget
        elif inspect.isfunction(member):
            kind, target = "method", member
        elif isinstance(member, (classmethod, staticmethod)):
            kind, target = "method", member.__func__
        else:
            continue
        first = _doc(target).split("\n\n")[0].replace("\n", " ") if target is not None else ""
        shown = name if kind == "property" else _signature(target, name).replace("(self, ", "(").replace("(self)", "()")
        lines.append(f"- `{shown}`" + (f": {first}" if first else ""))
    return lines


def render() -> str:
    """The reference as Markdown."""
    from pydantic import BaseModel

    import jetl

    listed = {n for _, names in GROUPS for n in names}
    public = set(jetl.__all__) - {"__version__"}
    missing = sorted(public - listed)
    if missing:  # a new public name gets a place in a group, or the reference would leave it out silently
        raise SystemExit(f"docs/reference/generate.py: put these public names in a group: {', '.join(missing)}")
    out = [
        "# API reference",
        "",
        "Generated from the code by `docs/reference/generate.py` (do not edit; `tests/docs/test_api_reference.py`",
        "fails when it is out of date). Everything here is importable from `jetl`.",
        "",
    ]
    for title, names in GROUPS:
        out += [f"## {title}", ""]
        for name in names:
            if name not in public:
                continue
            obj = getattr(jetl, name)
            model = inspect.isclass(obj) and issubclass(obj, BaseModel)
            kind = "class" if inspect.isclass(obj) else "function"
            shown = f"{name}(**fields)" if model else _signature(obj, name)
            out += [f"### `{name}`", "", "```python", f"{kind} {shown}", "```", ""]
            doc = _doc(obj)
            if doc:
                out += [doc, ""]
            if model:
                out += ["Fields:", "", *_fields(obj), ""]
            if inspect.isclass(obj):
                members = _members(obj)
                if members:
                    out += [*members, ""]
    return _clean("\n".join(out).rstrip() + "\n")


def main() -> None:
    text = render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run `uv run python docs/reference/generate.py`")
            sys.exit(1)
        return
    OUT.write_text(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
