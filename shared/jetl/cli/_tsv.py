"""Tables as TSV lines, the one format `jetl.cli._console` (through rich) and `jetl.cli._output.Rows` (without it)
print where stdout is no terminal."""

from __future__ import annotations


def tsv_lines(title: str, headers: list[str], rows: list[tuple[str, ...]]) -> list[str]:
    """A table of plain cells as TSV lines: a `# title` line (if any), the header line, one line per row."""
    lines = [f"# {title}"] if title else []
    lines.append("\t".join(headers))
    lines.extend("\t".join(row) for row in rows)
    return lines
