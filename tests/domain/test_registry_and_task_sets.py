"""The registry's and task sets' decide/evolve, without I/O."""

from __future__ import annotations

import pytest

from domain import registry as reg
from domain import task_sets as ts
from domain.errors import IllegalTransition, InvalidCommand


def pushed(version: str = "1.0.0", digest: str = "sha256:" + "a" * 64) -> reg.TaskVersionPushed:
    return reg.TaskVersionPushed(
        org_id="o",
        org_key="acme",
        name="t",
        version=version,
        manifest_digest=digest,
        bundle_digest="sha256:" + "b" * 64,
        config_digest="sha256:" + "c" * 64,
        bundle_size=10,
    )


def fold(*events: reg.AnyTaskEvent) -> reg.TaskFamily | None:
    family: reg.TaskFamily | None = None
    for event in events:
        family = reg.evolve(family, event, "2026-11-30T00:00:00+00:00", "a@b")
    return family


def test_the_same_bytes_pushed_again_decide_nothing_and_other_bytes_are_refused() -> None:
    family = fold(pushed())
    assert reg.decide_push(family, pushed()) == []
    with pytest.raises(IllegalTransition, match="immutable"):
        reg.decide_push(family, pushed(digest="sha256:" + "f" * 64))
    assert reg.decide_push(family, pushed(version="1.0.1")) == [pushed(version="1.0.1")]


def test_a_deleted_version_may_be_pushed_again_with_other_bytes() -> None:
    family = fold(pushed())
    assert family is not None
    (deleted,) = reg.decide_delete(family, "1.0.0")
    after = fold(pushed(), deleted)
    assert after is not None and after.versions == {}
    other = pushed(digest="sha256:" + "f" * 64)
    assert reg.decide_push(after, other) == [other]
    with pytest.raises(InvalidCommand):
        reg.decide_delete(after, "1.0.0")


def test_visibility_changes_only_when_it_differs_and_counts_stream_versions() -> None:
    family = fold(pushed())
    assert family is not None and family.stream_version == 1
    (published,) = reg.decide_visibility(family, True)
    public = fold(pushed(), published)
    assert public is not None and public.is_public and public.stream_version == 2
    assert reg.decide_visibility(public, True) == []


def test_stream_ids_are_uuid_sized_and_distinct_per_org_and_name() -> None:
    ids = {reg.task_stream_id("o", "t"), reg.task_stream_id("o", "u"), reg.task_stream_id("p", "t")}
    assert len(ids) == 3 and all(len(i) == 36 for i in ids)
    assert ts.task_set_stream_id("o", "t") not in ids


def test_a_manifest_body_parses_both_member_forms_and_refuses_what_the_contract_forbids() -> None:
    content = ts.parse_content(
        {
            "members": ["acme/a", "acme/a@1.0.0", {"task_name": "acme/b", "notes": "n"}],
            "tags": ["web"],
        }
    )
    assert [m.ref for m in content.members] == ["acme/a", "acme/a@1.0.0", "acme/b"]
    for bad in ([], ["a"], ["acme/a", "acme/a"], [{"task_name": "acme/a", "task_version": 1}], [3]):
        with pytest.raises(InvalidCommand):
            ts.parse_content({"members": bad})


def test_a_set_is_created_once_replaced_and_deleted_then_creatable_again() -> None:
    content = ts.parse_content({"members": ["acme/a"]})
    (created,) = ts.decide_create(None, "o", "acme", "s", content, False)
    state = ts.evolve(None, created, "t0", None)
    assert state is not None
    with pytest.raises(IllegalTransition):
        ts.decide_create(state, "o", "acme", "s", content, False)
    assert ts.decide_replace(state, content) == []
    (deleted,) = ts.decide_delete(state)
    gone = ts.evolve(state, deleted, "t1", None)
    assert ts.live(gone) is None
    (again,) = ts.decide_create(gone, "o", "acme", "s", content, True)
    assert isinstance(again, ts.TaskSetCreated) and again.is_public
