"""The development environment: real components on loopback for tests, benchmarks and demos.

What controller-runtime's ``pkg/envtest`` is to Go controllers: everything
the end-to-end tests, ``bench/`` and ``hack/demo*.py`` start and talk to, and
nothing the controller needs at run time (the image holds ``cloner/`` only;
``.dockerignore`` leaves this package out). ``cloner`` never imports it.

- ``harness``: etcd, kube-apiserver, dockerd and the "public" and "owned"
  registries as child processes (:class:`~devenv.harness.Environment`);
- ``cluster``: a real single-node cluster on top of it (containerd, kubelet,
  controller-manager, scheduler), with ``podnet`` its pod network;
- ``images``, ``signing``, ``olareg``: images, signatures and referrers built
  through the registry HTTP API, and a registry with the referrers API;
- ``support``: a test's :class:`~devenv.support.Scope`, controller runs,
  workload and registry-log helpers, a fault-injecting registry proxy;
- ``credhelper``: a real docker credential helper;
- ``workloads``: workload objects of every kind, built from the controller's
  kind table (also the unit tests' stand-in objects);
- ``waiting``: ``wait_for``, the one polling helper (standard library only).

Installed into the dev venv with ``pip install -e .`` (``make
.venv/.installed``), so tests, ``python -m bench.NAME`` and ``hack/*.py`` import
it without touching ``sys.path``.
"""
