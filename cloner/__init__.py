"""image-cloner: copies the public images workloads use into an owned registry, then patches them.

The package is layered; ``import-linter`` checks it (``pyproject.toml``):

- ``cloner.model``: pure decisions, no I/O (references and owned names,
  workload snapshots and patches, identity of copies, durable-state records,
  pull-secret bodies, lease, TLS and backoff rules, Event aggregation);
- ``cloner.adapters``: everything that talks to the outside (the Kubernetes
  API and Leases, the Docker engine, skopeo, the registry HTTP API,
  credential helpers, the metrics/health HTTP server);
- ``cloner.ops``: the operations (the reconcile cycle, cloning, pull-secret
  provisioning, revert, plan, the loop), written against protocols, never
  against an adapter;
- ``cloner.config`` and ``cloner.errors`` at the bottom, ``cloner.metrics``
  (every Prometheus object) beside the operations; ``controller.py`` builds
  the adapters and wires everything.
"""

__version__ = "0.2.0"
