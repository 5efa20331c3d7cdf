"""Testing helpers for jetl and for pipeline authors: real servers for fixtures, and contract suites.

- `jetl.testing.servers`: NATS (one server or a cluster) and PostgreSQL for tests (containers when Docker answers,
  else local binaries).
- `jetl.testing.contracts`: one abstract suite per plugin protocol; subclass it for your own connector.
- `jetl.testing.api`: a local JSON API; `jetl.testing.pipelines`: pipeline modules as text for a pipelines folder.
"""
