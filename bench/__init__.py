"""Benchmarks on the real components of ``devenv`` and of the pure hot path.

Each module is run with ``python -m bench.NAME`` (``make bench``): ``run``,
``copies``, ``scale``, ``kube_writes``; ``plot`` draws the timelines of their
results. Nothing here is part of the controller image.
"""
