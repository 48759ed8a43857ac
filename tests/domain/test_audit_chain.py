"""The audit chain arithmetic: the fast canonical path equals the documented recipe, and the
walk names what an attacker did (changed, missing, inserted, reordered)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from domain.audit_chain import (
    ZERO_HASH,
    Chainer,
    Checkpoint,
    Link,
    canonical,
    canonical_body,
    canonical_text,
    check_events,
    event_content,
    event_hash,
    hash_body,
    verify_links,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_canonical_text_equals_the_documented_python_recipe(value: Any) -> None:
    text = json.dumps(value)  # any spelling of the value: spaces, escapes, key order
    assert canonical_text(text) == canonical(json.loads(text))


@given(st.dictionaries(st.text(), json_values, max_size=5), st.text(), st.integers(1, 10**6))
def test_append_path_hash_equals_the_hash_of_the_documented_object(
    data: dict[str, Any], text: str, version: int
) -> None:
    fields = {
        "event_id": text,
        "stream_type": "item",
        "stream_id": f"ünï {text}",
        "stream_version": version,
        "event_type": "item.done",
        "schema_version": 2,
        "recorded_at": "2026-11-30T12:00:00.000000Z",
    }
    data_text, metadata_text = json.dumps(data), json.dumps({"actor": {"id": text}})
    fast = hash_body(
        ZERO_HASH,
        canonical_body(
            **fields,
            data_canonical=canonical_text(data_text),
            metadata_canonical=canonical_text(metadata_text),
        ),
    )
    content = event_content(**fields, data=data, metadata=json.loads(metadata_text))
    assert fast == event_hash(ZERO_HASH, content)


def chain(count: int) -> list[Link]:
    chainer = Chainer(chain_head=ZERO_HASH)
    links, prev = [], {0: ZERO_HASH, 1: ZERO_HASH}
    for n in range(1, count + 1):
        stream = n % 2
        content = {"n": n}
        own, chain_prev, chain_hash = chainer.link(prev[stream], content)
        version = (n + 1) // 2 if stream else n // 2
        body = canonical(content)
        links.append(
            Link(n, "s", str(stream), version, body, prev[stream], own, chain_prev, chain_hash)
        )
        prev[stream] = own
    return links


def located(links: list[Link]) -> Any:
    return lambda h: next((link.position for link in links if link.chain_hash == h), None)


def test_an_intact_chain_verifies_and_each_tampering_is_named() -> None:
    links = chain(8)
    assert verify_links(links) is None

    edited = [*links[:3], replace(links[3], body=canonical({"n": 99})), *links[4:]]
    assert verify_links(edited).problem == "changed"  # type: ignore[union-attr]

    deleted = [*links[:3], *links[4:]]
    finding = verify_links(deleted, locate=located(deleted))
    assert (finding.position, finding.problem) == (5, "missing")  # type: ignore[union-attr]

    swapped = [
        *links[:2],
        replace(links[5], position=3),
        *links[3:5],
        replace(links[2], position=6),
    ]
    finding = verify_links([*swapped, *links[6:]], locate=located(swapped))
    assert (finding.position, finding.problem) == (3, "reordered")  # type: ignore[union-attr]

    stranger = replace(links[0], position=4, hash="f" * 64)
    inserted = [*links[:3], stranger, *(replace(x, position=x.position + 1) for x in links[3:])]
    finding = verify_links(inserted)
    assert (finding.position, finding.problem) == (4, "inserted")  # type: ignore[union-attr]


def test_a_checkpoint_must_still_be_in_the_log_with_its_hash() -> None:
    links = chain(4)
    assert verify_links(links, checkpoint=Checkpoint(4, links[3].chain_hash)) is None
    finding = verify_links(links, checkpoint=Checkpoint(4, "0" * 64))
    assert (finding.position, finding.problem) == (4, "changed")  # type: ignore[union-attr]
    finding = verify_links(links[:3], checkpoint=Checkpoint(4, links[3].chain_hash))
    assert (finding.position, finding.problem) == (4, "missing")  # type: ignore[union-attr]


def test_one_streams_events_check_alone_and_only_the_edited_event_is_named() -> None:
    links = chain(8)
    one_stream = [link for link in links if link.stream_id == "1"]  # positions 1, 3, 5, 7
    assert check_events(links) == [] and check_events(one_stream) == []

    edited = [
        replace(link, body=canonical({"n": 99})) if link.position == 5 else link for link in links
    ]
    assert [(f.position, f.problem) for f in check_events(edited)] == [(5, "changed")]

    rechained = [
        replace(link, chain_hash="a" * 64) if link.position == 4 else link for link in links
    ]
    assert [f.position for f in check_events(rechained)] == [
        4,
        5,
    ]  # its own and its successor's link

    gap = [link for link in one_stream if link.position != 3]
    finding = check_events(gap)[0]
    assert (finding.position, finding.problem) == (5, "missing")
