"""The task registry's OCI routes at the HTTP level, on SQLite and PostgreSQL: auth, digests,
uploads, manifests, immutability, ingest validation and tenancy. A refused request appends
nothing to the log."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from infrastructure.db.engine import create_engine
from infrastructure.db.store_tables import events
from infrastructure.identity.bootstrap import bootstrap
from infrastructure.registry.bundles import pack
from tests.app.conftest import Api, run_identity

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LAYER = "application/vnd.dreadnode.layer.v1.tar+gzip"
CONFIG = "application/vnd.dreadnode.config.v1+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def basic(key: str, user: str = "__token__") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()}


def task_events(api: Api) -> list[tuple[str, str]]:
    async def read() -> list[tuple[str, str]]:
        engine = create_engine(api.settings.database_url)
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    sa.select(events.c.event_type, events.c.metadata)
                    .where(events.c.stream_type == "task")
                    .order_by(events.c.position)
                )
                return [(r[0], r[1]) for r in rows.all()]
        finally:
            await engine.dispose()

    return asyncio.run(read())


def write_bundle(folder: Path, name: str, version: str, *, flag: str = "FLAG{x}") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "task.yaml").write_text(
        f"name: {name}\nversion: {version}\n"
        "instruction: Write the flag to /tmp/result.txt\n"
        f"verification: {{method: flag, path: /tmp/result.txt, value: '{flag}'}}\n"
    )
    return folder


def upload(api: Api, repo: str, data: bytes) -> str:
    digest = digest_of(data)
    started = api.client.post(f"/v2/{repo}/blobs/uploads/", headers=basic(api.key))
    assert started.status_code == 202, started.text
    done = api.client.put(
        f"{started.headers['Location']}?digest={digest}",
        content=data,
        headers={**basic(api.key), "Content-Type": "application/octet-stream"},
    )
    assert done.status_code == 201, done.text
    return digest


def push(api: Api, repo: str, version: str, folder: Path, prefix: str = "/v2") -> Any:
    layer = pack(folder)
    config = json.dumps({"name": repo}).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": upload(api, repo, config), "size": len(config)},
        "layers": [{"mediaType": LAYER, "digest": upload(api, repo, layer), "size": len(layer)}],
        "annotations": {"io.dreadnode.type": "environment", "io.dreadnode.version": version},
    }
    return api.client.put(
        f"{prefix}/{repo}/manifests/{version}",
        content=json.dumps(manifest).encode(),
        headers={**basic(api.key), "Content-Type": MANIFEST},
    )


def test_the_registry_root_answers_an_authenticated_client_and_asks_others_for_basic_auth(
    api: Api,
) -> None:
    anonymous = api.client.get("/v2/")
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
    assert anonymous.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert api.client.get("/v2/", headers=basic(api.key)).status_code == 200
    assert api.client.get("/v2/", headers=basic("not-a-key")).status_code == 401
    assert api.client.get("/v2/", headers=basic(api.key, user="someone")).status_code == 401


def test_an_upload_whose_bytes_do_not_match_its_digest_is_refused_and_not_stored(
    api: Api,
) -> None:
    claimed = digest_of(b"what was promised")
    started = api.client.post("/v2/acme/t/blobs/uploads/", headers=basic(api.key))
    refused = api.client.put(
        f"{started.headers['Location']}?digest={claimed}",
        content=b"something else",
        headers={**basic(api.key), "Content-Type": "application/octet-stream"},
    )
    assert refused.status_code == 400
    body = refused.json()
    assert body["errors"][0]["code"] == "DIGEST_INVALID"
    assert "not " + claimed in body["detail"]
    assert api.client.head(f"/v2/acme/blobs/{claimed}", headers=basic(api.key)).status_code == 404
    monolithic = api.client.post(
        f"/v2/acme/t/blobs/uploads/?digest={claimed}",
        content=b"something else",
        headers={**basic(api.key), "Content-Type": "application/octet-stream"},
    )
    assert monolithic.status_code == 400
    assert monolithic.json()["errors"][0]["code"] == "DIGEST_INVALID"


def test_a_malformed_digest_is_a_400_and_an_unknown_blob_a_404(api: Api) -> None:
    bad = api.client.get("/v2/acme/blobs/md5:abc", headers=basic(api.key))
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["code"] == "DIGEST_INVALID"
    unknown = digest_of(b"never uploaded")
    missing = api.client.get(f"/api/v1/acme/blobs/{unknown}", headers=basic(api.key))
    assert missing.status_code == 404
    assert missing.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
    head = api.client.head(f"/api/v1/acme/blobs/{unknown}", headers=basic(api.key))
    assert head.status_code == 404 and head.content == b""
    gone = api.client.patch(
        "/v2/acme/t/blobs/uploads/00000000-0000-0000-0000-000000000000",
        content=b"x",
        headers=basic(api.key),
    )
    assert gone.status_code == 404
    assert gone.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


def test_a_chunked_upload_is_stored_under_its_digest_and_read_back(api: Api) -> None:
    data = b"chunk one|chunk two"
    started = api.client.post("/v2/acme/t/blobs/uploads/", headers=basic(api.key))
    location = started.headers["Location"]
    first = api.client.patch(location, content=data[:10], headers=basic(api.key))
    assert (first.status_code, first.headers["Range"]) == (202, "0-9")
    api.client.patch(location, content=data[10:], headers=basic(api.key))
    done = api.client.put(f"{location}?digest={digest_of(data)}", headers=basic(api.key))
    assert done.status_code == 201
    assert done.headers["Docker-Content-Digest"] == digest_of(data)
    head = api.client.head(f"/v2/acme/t/blobs/{digest_of(data)}", headers=basic(api.key))
    assert (head.status_code, head.headers["Content-Length"]) == (200, str(len(data)))
    assert (
        api.client.get(f"/v2/acme/blobs/{digest_of(data)}", headers=basic(api.key)).content == data
    )


def test_a_pushed_manifest_is_served_by_tag_by_digest_and_as_latest_and_listed_in_tags(
    api: Api, tmp_path: Path
) -> None:
    pushed = push(api, "acme/hello", "1.0.0", write_bundle(tmp_path / "b", "hello", "1.0.0"))
    assert pushed.status_code == 201, pushed.text
    digest = pushed.headers["Docker-Content-Digest"]
    for reference in ("1.0.0", digest, "latest"):
        got = api.client.get(f"/api/v1/acme/hello/manifests/{reference}", headers=basic(api.key))
        assert got.status_code == 200 and digest_of(got.content) == digest
    head = api.client.head("/v2/acme/hello/manifests/1.0.0", headers=basic(api.key))
    assert head.headers["Docker-Content-Digest"] == digest
    tags = api.client.get("/v2/acme/hello/tags/list", headers=basic(api.key)).json()
    assert tags == {"name": "acme/hello", "tags": ["1.0.0"]}
    ((event_type, metadata),) = task_events(api)
    assert event_type == "task.version_pushed"
    assert json.loads(metadata)["actor"]["email"] == "owner@acme.test"


def test_other_bytes_under_a_pushed_version_are_a_409_and_append_nothing(
    api: Api, tmp_path: Path
) -> None:
    assert (
        push(api, "acme/fixed", "1.0.0", write_bundle(tmp_path / "a", "fixed", "1.0.0")).status_code
        == 201
    )
    again = push(api, "acme/fixed", "1.0.0", write_bundle(tmp_path / "a", "fixed", "1.0.0"))
    assert again.status_code == 201  # the same bytes: accepted, nothing new
    other = write_bundle(tmp_path / "b", "fixed", "1.0.0", flag="FLAG{other}")
    refused = push(api, "acme/fixed", "1.0.0", other)
    assert refused.status_code == 409
    assert "immutable" in refused.json()["detail"]
    assert [t for t, _ in task_events(api)] == ["task.version_pushed"]


def test_a_bundle_the_loader_refuses_is_rejected_at_push_with_its_reason(
    api: Api, tmp_path: Path
) -> None:
    folder = write_bundle(tmp_path / "bad", "bad", "1.0.0")
    (folder / "task.yaml").write_text(
        "name: bad\nversion: 1.0.0\ninstruction: x\nverification: {method: llm_judge}\n"
    )
    refused = push(api, "acme/bad", "1.0.0", folder)
    assert refused.status_code == 400
    body = refused.json()
    assert body["errors"][0]["code"] == "MANIFEST_INVALID"
    assert body["detail"].startswith("task bundle rejected:")
    mismatched = push(api, "acme/other-name", "1.0.0", write_bundle(tmp_path / "m", "x", "1.0.0"))
    assert mismatched.status_code == 400
    assert "pushed as 'other-name'" in mismatched.json()["detail"]
    assert task_events(api) == []


def test_a_private_task_is_invisible_to_another_org_until_published(
    api: Api, tmp_path: Path
) -> None:
    assert (
        push(
            api, "acme/secret", "1.0.0", write_bundle(tmp_path / "s", "secret", "1.0.0")
        ).status_code
        == 201
    )
    rival = run_identity(
        api.settings,
        lambda store: bootstrap(
            store,
            org_key="rival",
            workspace_key="main",
            email="owner@rival.test",
            username="rival",
        ),
    ).raw_key
    manifest = "/v2/acme/secret/manifests/1.0.0"
    assert api.client.get(manifest, headers=basic(rival)).status_code == 404
    assert (
        api.client.post("/v2/acme/secret/blobs/uploads/", headers=basic(rival)).status_code == 404
    )
    published = api.client.patch(
        "/api/v1/org/acme/tasks/secret/visibility", json={"is_public": True}, headers=api.headers
    )
    assert (published.status_code, published.json()["is_public"]) == (200, True)
    got = api.client.get(manifest, headers=basic(rival))
    assert got.status_code == 200
    layer = json.loads(got.content)["layers"][0]["digest"]
    assert api.client.get(f"/v2/acme/blobs/{layer}", headers=basic(rival)).status_code == 200
    rival_list = api.client.get(
        "/api/v1/org/rival/tasks", params={"include_public": True}, headers={"X-API-Key": rival}
    ).json()
    assert any(t["name"] == "secret" and t["org_key"] == "acme" for t in rival_list["tasks"])
    assert [t for t, _ in task_events(api)] == ["task.version_pushed", "task.visibility_changed"]


def test_a_deleted_version_is_gone_and_its_deletion_is_in_the_log(api: Api, tmp_path: Path) -> None:
    assert (
        push(api, "acme/brief", "1.0.0", write_bundle(tmp_path / "s", "brief", "1.0.0")).status_code
        == 201
    )
    deleted = api.client.delete("/api/v1/org/acme/tasks/brief/1.0.0", headers=api.headers)
    assert deleted.status_code == 204
    assert api.client.get("/api/v1/org/acme/tasks/brief", headers=api.headers).status_code == 404
    assert (
        api.client.delete("/api/v1/org/acme/tasks/brief/1.0.0", headers=api.headers).status_code
        == 404
    )
    assert [t for t, _ in task_events(api)] == ["task.version_pushed", "task.version_deleted"]


@pytest.mark.parametrize("path", ["/v2/acme/x/blobs/uploads/", "/v2/acme/x/manifests/1.0.0"])
def test_registry_writes_need_a_key(api: Api, path: str) -> None:
    method = api.client.post if path.endswith("uploads/") else api.client.put
    refused = method(path, content=b"{}")
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Basic")
