"""One redaction rule for every URL and DSN that jetl shows."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from jetl.redact import redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://default:s3cret@ch.example:8443/db", "https://default:***@ch.example:8443/db"),
        ("postgresql+psycopg://app:p%40ss@db:5432/x", "postgresql+psycopg://app:***@db:5432/x"),
        ("nats://operator:pw@127.0.0.1:4222", "nats://operator:***@127.0.0.1:4222"),
        ("https://ch.example:8443/?password=s3cret&database=x", "https://ch.example:8443/?password=***&database=x"),
        ("chdb:///data/chdb", "chdb:///data/chdb"),
        ("https://user@host/db", "https://user@host/db"),
        ("https://u:s3cret@host:notaport/db", "https://***"),
        ("", ""),
    ],
)
def test_urls_are_shown_without_their_secrets(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_url(SecretStr(url)) == shown


def test_error_text_that_quotes_a_url_or_a_secret_is_masked() -> None:
    text = "cannot connect to https://default:s3cret@ch:8443?token=abc (login as default with hunter2)"
    out = redact_text(text, SecretStr("hunter2"), None)
    assert "s3cret" not in out and "abc" not in out and "hunter2" not in out
    assert "https://default:***@ch:8443?token=***" in out


def test_log_lines_mask_url_passwords_as_a_last_line_of_defence(capsys: pytest.CaptureFixture[str]) -> None:
    import structlog

    from jetl.logging import add_sink, configure_logging, get_logger, remove_sink

    shipped: list[dict[str, object]] = []
    add_sink(shipped.append)
    saved = structlog.get_config()  # configure_logging binds the captured stderr: later tests must not print to it
    try:
        configure_logging("test", fmt="json")
        try:
            raise RuntimeError("driver said: cannot reach https://default:hunter2@ch:8443/db")
        except RuntimeError:
            get_logger("t").exception(
                "failed", dsn="postgresql://app:hunter2@db/x", nested={"urls": ["nats://u:hunter2@n:4222"]}
            )
    finally:
        remove_sink(shipped.append)
        structlog.configure(**saved)
    printed = capsys.readouterr().err
    assert "hunter2" not in printed and "hunter2" not in repr(shipped)
    assert "postgresql://app:***@db/x" in printed and "https://default:***@ch:8443/db" in printed


def test_log_lines_follow_the_standard_error_that_is_current_when_written(capsys: pytest.CaptureFixture[str]) -> None:
    """A configured logger writes to `sys.stderr` as it is at each line, not as it was when logging was configured
    (CI saw a test's lines vanish into an earlier test's captured stream)."""
    import io
    import logging
    import sys

    import structlog

    from jetl.logging import configure_logging, get_logger

    saved = structlog.get_config()
    earlier = io.StringIO()
    try:
        real, sys.stderr = sys.stderr, earlier
        try:
            configure_logging("test")
        finally:
            sys.stderr = real
        get_logger("t").warning("from structlog")
        logging.getLogger("faststream").warning("from the standard library")
    finally:
        structlog.configure(**saved)
    printed = capsys.readouterr().err
    assert "from structlog" in printed and "from the standard library" in printed
    assert earlier.getvalue() == ""
