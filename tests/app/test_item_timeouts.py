"""Which timeout bounds an item: the evaluation's task_timeout_sec when given, else the task's
own timeout_sec, else the service default; the item shows which one applied, and the worker
enforces it."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.app.execution_fixtures import Start, write_bundle


def slow_task(bundles: Path, name: str, *, sleep: int, timeout_sec: int | None) -> None:
    folder = write_bundle(bundles, name, solution=f"sleep {sleep}\necho 'FLAG{{ok}}'\n")
    if timeout_sec is not None:
        spec = yaml.safe_load((folder / "task.yaml").read_text())
        spec["timeout_sec"] = timeout_sec
        (folder / "task.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def test_a_task_whose_own_timeout_is_shorter_than_its_solution_times_out(
    service: Start, bundles: Path
) -> None:
    slow_task(bundles, "slow-own-timeout", sleep=6, timeout_sec=2)
    engine = service()
    created = engine.create(name="own", capability="oracle", task_names=["slow-own-timeout"])

    done = engine.wait(created["id"], timeout=30)

    assert done["item_counts"]["timed_out"] == 1, done["item_counts"]
    [item] = engine.items(created["id"])
    assert item["status"] == "timed_out"
    assert item["metadata_json"]["timeout"] == {"seconds": 2, "source": "task"}
    assert "the task's timeout_sec (2s) exceeded" in item["error"]


def test_the_evaluation_timeout_wins_over_the_task_timeout(service: Start, bundles: Path) -> None:
    slow_task(bundles, "slow-but-allowed", sleep=3, timeout_sec=1)
    engine = service()
    created = engine.create(
        name="eval-wins",
        capability="oracle",
        task_names=["slow-but-allowed"],
        task_timeout_sec=30,
    )
    [queued] = engine.items(created["id"])
    assert queued["metadata_json"]["timeout"] == {"seconds": 30, "source": "evaluation"}

    done = engine.wait(created["id"], timeout=30)

    assert done["status"] == "completed", done["item_counts"]
    [item] = engine.items(created["id"])
    assert item["status"] == "passed"
    assert item["metadata_json"]["timeout"] == {"seconds": 30, "source": "evaluation"}


def test_a_task_without_a_timeout_gets_the_default(service: Start, bundles: Path) -> None:
    slow_task(bundles, "no-own-timeout", sleep=0, timeout_sec=None)
    engine = service(default_task_timeout_sec=45)
    created = engine.create(name="default", capability="oracle", task_names=["no-own-timeout"])
    assert created["task_timeout_sec"] == 45
    [item] = engine.items(created["id"])
    assert item["metadata_json"]["timeout"] == {"seconds": 45, "source": "default"}
    assert engine.wait(created["id"])["status"] == "completed"
