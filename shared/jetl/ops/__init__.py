"""The operator's read models and actions, over one `JetlClient` handle: what the CLI prints and the dashboard shows.

- `client`: `JetlClient`, the handle that owns one NATS connection, the bus and the state bucket;
- `health`, `ledger`, `logs`, `deadletters`, `redrive`, `cursors`, `schedule_state`, `cdc`, `backfill`, `checks`,
  `destination`: each one job an operator does, as functions of a `JetlClient` (typed as `handle.Handle`, what they
  use of it, so that the client can call them without an import cycle).

Nothing below this package (the contracts, connectors, bus, state, `runtime/`) imports it; `cli/` and `ui/` sit on
top of it (`tests/test_layers.py` holds the rule).
"""
