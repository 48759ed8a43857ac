"""ExpiringMap on a fake clock: entries lapse after their lifetime, the map stays bounded."""

from __future__ import annotations

import pytest

from infrastructure.expiring import ExpiringMap


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_is_served_until_its_lifetime_ends() -> None:
    clock = FakeClock()
    cache: ExpiringMap[str, int] = ExpiringMap(2.0, clock=clock)
    cache.put("a", 1)

    clock.now += 1.999
    assert cache.get("a") == 1
    clock.now += 0.001
    assert cache.get("a") is None
    assert len(cache) == 0  # a lapsed entry is dropped when it is asked for


def test_a_put_again_restarts_the_lifetime_and_replaces_the_value() -> None:
    clock = FakeClock()
    cache: ExpiringMap[str, int] = ExpiringMap(2.0, clock=clock)
    cache.put("a", 1)
    clock.now += 1.5
    cache.put("a", 2)
    clock.now += 1.5

    assert cache.get("a") == 2


def test_drop_and_clear_forget_entries() -> None:
    cache: ExpiringMap[str, int] = ExpiringMap(60.0, clock=FakeClock())
    cache.put("a", 1)
    cache.put("b", 2)

    cache.drop("a")
    cache.drop("missing")
    assert (cache.get("a"), cache.get("b")) == (None, 2)
    cache.clear()
    assert cache.get("b") is None and len(cache) == 0


def test_a_lifetime_of_zero_keeps_nothing() -> None:
    cache: ExpiringMap[str, int] = ExpiringMap(0.0, clock=FakeClock())
    cache.put("a", 1)

    assert cache.get("a") is None and len(cache) == 0


def test_past_its_bound_the_oldest_put_goes_first() -> None:
    clock = FakeClock()
    cache: ExpiringMap[int, str] = ExpiringMap(60.0, max_entries=3, clock=clock)
    for key in range(3):
        cache.put(key, f"v{key}")
        clock.now += 1
    cache.put(0, "again")  # 0 becomes the newest put
    cache.put(3, "v3")

    assert len(cache) == 3
    assert cache.get(1) is None
    assert [cache.get(k) for k in (0, 2, 3)] == ["again", "v2", "v3"]


def test_lapsed_entries_make_room_before_live_ones_are_evicted() -> None:
    clock = FakeClock()
    cache: ExpiringMap[int, int] = ExpiringMap(5.0, max_entries=3, clock=clock)
    cache.put(1, 1)
    cache.put(2, 2)
    clock.now += 3
    cache.put(3, 3)
    clock.now += 2.5  # 1 and 2 lapsed, 3 still live

    cache.put(4, 4)

    assert len(cache) == 2
    assert (cache.get(3), cache.get(4)) == (3, 4)


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        ExpiringMap(1.0, max_entries=0)
