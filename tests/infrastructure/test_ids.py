"""Ids as they arrive: any spelling of a UUID becomes its one canonical text."""

from __future__ import annotations

import uuid

from infrastructure.ids import canonical_id, normalise_prefix

ID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


def test_every_spelling_of_a_uuid_has_one_canonical_text() -> None:
    for spelling in (ID, ID.upper(), ID.replace("-", ""), f" {ID.upper()} ", "{" + ID + "}"):
        assert canonical_id(spelling) == ID, spelling
    assert canonical_id(str(uuid.UUID(ID))) == ID


def test_what_is_not_a_uuid_has_no_canonical_text() -> None:
    for raw in ("", "red-team", ID[:-1], ID + "0", ID.replace("a", "g")):
        assert canonical_id(raw) is None, raw


def test_prefixes_are_lower_cased_and_whole_ids_canonical() -> None:
    assert normalise_prefix(ID.upper()) == ID
    assert normalise_prefix(ID.replace("-", "").upper()) == ID
    assert normalise_prefix("0A1B2C3D") == "0a1b2c3d"
    assert normalise_prefix("0A1B2C3D-4E") == "0a1b2c3d-4e"
    assert normalise_prefix("0a1b2c3") is None  # shorter than MIN_PREFIX
    assert normalise_prefix("not-hex-at-all") is None
