"""The service runtime, apart from the library: what runs a stage process, not what a pipeline or the CLI uses.

- `service`: the FastStream app every service is built on (`build_app`), its `ServiceContext`, the stage
  subscriber (`stage_subscriber`, with the `keep_alive` beats of a fetched batch), heartbeats, log shipping, the
  pipeline watcher and the health responder.
- `stage`: what every stage does with an input message: open its batch, reject it, and decide its ack
  (`decide_ack`: ack, nak with backoff, or dead-letter then term).
- `heap`: the garbage-collector settings of a stage process (`freeze_heap`).

Services import from here; the library (contracts, connectors, bus, event log) never does. The embedded stack that
starts nats-server and the services as processes is `jetl.stack`.
"""
