"""The durable state: shards, round trips, damage, bounds and expiry."""

from __future__ import annotations

import json

from cloner.model.state import (
    BACKOFF_KEY,
    RECORDS_KEY,
    SHARDS,
    USE_RESOLUTION,
    Failure,
    Record,
    StateBook,
    shard_names,
    shard_of,
)

DIGEST = "sha256:" + "a" * 64


def record(source: str, used: float = 1000.0) -> Record:
    return Record(
        source=source,
        source_digest=DIGEST,
        owned=f"owned.example/m/{source}",
        owned_digest=DIGEST,
        image=f"owned.example/m/{source}",
        platforms=("linux/amd64", "linux/arm64"),
        backend="skopeo",
        verified=used,
        used=used,
    )


def test_round_trip_through_configmap_data() -> None:
    book = StateBook("st")
    for i in range(40):
        book.verified(record(f"docker.io/library/app{i}:1"))
    book.failed("quay.io/x/y:1", Failure(3, 5000.0, "network"))
    shards = book.dirty_shards()
    assert set(shards) <= set(shard_names("st")) and len(shards) > 1
    book.written(shards)
    assert book.dirty_shards() == {}
    again = StateBook("st")
    assert again.load({name: shards.get(name) for name in shard_names("st")}) == []
    assert again.records == book.records
    assert again.failures == {"quay.io/x/y:1": Failure(3, 5000.0, "network")}


def test_a_change_dirties_only_its_own_shard() -> None:
    book = StateBook("st")
    book.verified(record("docker.io/library/a:1"))
    assert list(book.dirty_shards()) == [f"st-{shard_of('docker.io/library/a:1')}"]


def test_damaged_entries_are_dropped_and_named_not_raised() -> None:
    good = record("docker.io/library/good:1")
    data = {
        RECORDS_KEY: json.dumps(
            {
                good.source: _as_json(good),
                "docker.io/library/bad:1": {"source": "docker.io/library/bad:1"},
                "docker.io/library/liar:1": {**_as_json(good)},
            }
        ),
        BACKOFF_KEY: "{not json",
    }
    book = StateBook("st")
    problems = book.load({"st-0": data, "st-1": None})
    assert set(book.records) == {good.source}
    assert len(problems) == 3


def _as_json(r: Record) -> dict[str, object]:
    return {
        "source": r.source,
        "source_digest": r.source_digest,
        "owned": r.owned,
        "owned_digest": r.owned_digest,
        "image": r.image,
        "platforms": list(r.platforms),
        "backend": r.backend,
        "verified": r.verified,
        "used": r.used,
    }


def test_use_is_written_at_most_once_per_resolution_and_unused_records_expire() -> None:
    book = StateBook("st", ttl=7 * 86400)
    book.verified(record("docker.io/library/a:1", used=0.0))
    book.verified(record("docker.io/library/b:1", used=0.0))
    book.written(book.dirty_shards())
    book.used(["docker.io/library/a:1"], USE_RESOLUTION / 2)
    assert book.dirty_shards() == {}  # a warm cycle writes nothing
    book.used(["docker.io/library/a:1"], 6 * 86400)
    assert book.dirty_shards()
    book.used(["docker.io/library/a:1"], 8 * 86400)
    assert set(book.records) == {"docker.io/library/a:1"}  # b was unused for over 7 days


def test_record_count_is_bounded_least_recently_used_first() -> None:
    from cloner.model import state

    saved = state.MAX_RECORDS
    state.MAX_RECORDS = 5
    try:
        book = StateBook("st")
        for i in range(7):
            book.verified(record(f"docker.io/library/app{i}:1", used=float(i)))
    finally:
        state.MAX_RECORDS = saved
    assert sorted(book.records) == [f"docker.io/library/app{i}:1" for i in range(2, 7)]


def test_shards_are_stable_and_cover_the_range() -> None:
    seen = {shard_of(f"docker.io/library/app{i}:1") for i in range(1000)}
    assert seen == set(range(SHARDS))


def test_the_last_verification_survives_a_restart() -> None:
    book = StateBook("st")
    book.verify_done(1234.5)
    shards = book.dirty_shards()
    assert list(shards) == ["st-0"]
    again = StateBook("st")
    assert again.load(shards) == []
    assert again.last_verify == 1234.5


def test_a_permanent_failure_keeps_its_inputs_across_a_restart() -> None:
    book = StateBook()
    book.failed("quay.io/x/y:1", Failure(1, 9000.0, "auth", "abc:def"))
    book.failed("quay.io/x/z:1", Failure(2, 9000.0, "network"))
    again = StateBook()
    assert again.load(book.dirty_shards()) == []
    assert again.failures["quay.io/x/y:1"].inputs == "abc:def"
    assert again.failures["quay.io/x/z:1"].inputs is None
