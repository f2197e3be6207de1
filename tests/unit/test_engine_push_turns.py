"""Pushes through the engine take turns on shared layers, and only on those."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from cloner.adapters.credential_store import CredentialStore
from cloner.adapters.engine import DockerRegistry


def engine(tmp_path: Path) -> DockerRegistry:
    return DockerRegistry("unix:///nonexistent.sock", CredentialStore(tmp_path / "config.json"))


def pushes(registry: DockerRegistry, *images: frozenset[str]) -> list[tuple[int, float, float]]:
    """Run one 0.2 s "push" per layer set at once; returns (image, start, end) in start order."""
    spans: list[tuple[int, float, float]] = []
    lock = threading.Lock()

    def push(number: int, layers: frozenset[str]) -> None:
        with registry._push_turn(layers):
            started = time.monotonic()
            time.sleep(0.2)
            with lock:
                spans.append((number, started, time.monotonic()))

    threads = [threading.Thread(target=push, args=(n, s)) for n, s in enumerate(images)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    return sorted(spans, key=lambda span: span[1])


def test_images_sharing_a_base_layer_push_one_after_the_other(tmp_path: Path) -> None:
    spans = pushes(
        engine(tmp_path),
        frozenset({"sha256:base", "sha256:app-a"}),
        frozenset({"sha256:base", "sha256:app-b"}),
    )
    (_, _, first_end), (_, second_start, _) = spans
    assert second_start >= first_end


def test_images_sharing_no_layer_push_at_the_same_time(tmp_path: Path) -> None:
    spans = pushes(
        engine(tmp_path),
        frozenset({"sha256:debian", "sha256:app-a"}),
        frozenset({"sha256:alpine", "sha256:app-b"}),
        frozenset(),  # layers unknown: never waits
    )
    assert len(spans) == 3
    assert max(start for _, start, _ in spans) < min(end for _, _, end in spans)


def test_a_push_that_fails_gives_its_layers_back(tmp_path: Path) -> None:
    registry = engine(tmp_path)
    try:
        with registry._push_turn(frozenset({"sha256:base"})):
            raise RuntimeError("push refused")
    except RuntimeError:
        pass
    done = threading.Event()

    def push() -> None:
        with registry._push_turn(frozenset({"sha256:base"})):
            done.set()

    threading.Thread(target=push).start()
    assert done.wait(2)
