"""Testing helpers for jetl and for pipeline authors: real servers for fixtures, and contract suites.

- `jetl.testing.servers`: NATS (one server or a cluster) and PostgreSQL for tests (containers when Docker answers,
  else local binaries).
- `jetl.testing.contracts`: one abstract suite per plugin protocol; subclass it for your own connector.
- `jetl.testing.memory`: stage tests without a server (FastStream's TestNatsBroker, a KV bucket in memory).
- `jetl.testing.cli`: the `jetl` CLI driven in-process against a given NATS and pipelines folder.
- `jetl.testing.api`: a local JSON API; `jetl.testing.webhook`: a local alert webhook that records what it is sent.
- `jetl.testing.pipelines`: pipeline modules as text for a pipelines folder; `jetl.testing.chdb`: a chdb folder read
  from a separate process.
"""
