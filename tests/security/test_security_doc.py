"""docs/security.md tells the truth: its table of users and permissions is the one `jetl.access` generates.

After changing the subjects or the roles, regenerate the table with `uv run python tests/security/test_security_doc.py`.
"""

from __future__ import annotations

import re
from pathlib import Path

from jetl.access import ROLES, permissions

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
BEGIN, END = "<!-- permissions: generated from jetl.access -->", "<!-- end of permissions -->"


def _cell(subjects: tuple[str, ...]) -> str:
    return "<br>".join(f"`{s}`" for s in subjects)


def table() -> str:
    """The users table as markdown, from `jetl.access.permissions`."""
    rows = ["| user | may publish to | may subscribe to |", "|---|---|---|"]
    rows += [f"| `{r}` | {_cell(permissions(r).publish)} | {_cell(permissions(r).subscribe)} |" for r in ROLES]
    return "\n".join(rows)


def documented() -> str:
    text = DOC.read_text()
    found = re.search(re.escape(BEGIN) + r"\n(.*?)\n" + re.escape(END), text, flags=re.S)
    assert found, f"{DOC} lost its generated permissions table"
    return found.group(1)


def test_the_permissions_table_is_what_jetl_access_generates() -> None:
    assert documented() == table(), "regenerate it: uv run python tests/security/test_security_doc.py"


if __name__ == "__main__":
    head, _, rest = DOC.read_text().partition(BEGIN + "\n")
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{BEGIN}\n{table()}\n{END}{tail}")
