"""The OCI Distribution v2 subset that `dn task push/pull/sync` speak, at the server root.

The client (dreadnode 2.0.52, `packaging/oci.py`) authenticates with basic auth
(`__token__` + the API key) and addresses blobs per org and everything else per repository
`<org>/<name>` under `/api/v1`; standard OCI clients use `/v2`. Both prefixes are served by
the same handlers:

- `GET /v2/`: 200 to an authenticated client, 401 with `WWW-Authenticate: Basic` otherwise.
- `HEAD|GET <p>/<org>/blobs/<digest>` and `<p>/<org>/<name>/blobs/<digest>`.
- `POST <p>/<org>/<name>/blobs/uploads/` (with `?digest=`: a monolithic upload in one request),
  `PATCH|GET <p>/<org>/<name>/blobs/uploads/<id>`, `PUT ...uploads/<id>?digest=`.
- `PUT|GET|HEAD <p>/<org>/<name>/manifests/<tag or digest>`; `GET <p>/<org>/<name>/tags/list`.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, head, patch, post, put

from app.api.context import container_of
from app.errors import ApiError
from app.services.registry import MEDIA_OCI_MANIFEST, RegistryService
from app.services.registry_errors import BadDigest, UploadUnknown
from infrastructure.identity.records import Principal
from infrastructure.registry.blobs import DigestInvalid, UnknownUpload

OCTET = "application/octet-stream"
API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}


async def _principal(request: Request[Any, Any, Any]) -> Principal:
    return await container_of(request).authenticator.principal(request)


def _registry(request: Request[Any, Any, Any]) -> RegistryService:
    return container_of(request).registry


async def _body(request: Request[Any, Any, Any]) -> bytes:
    """The request body, refused past ASSAY_MAX_BLOB_BYTES (the app-wide JSON limit does not
    apply to registry uploads)."""
    limit = container_of(request).settings.max_blob_bytes
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"blob larger than ASSAY_MAX_BLOB_BYTES ({limit} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _prefix(request: Request[Any, Any, Any]) -> str:
    return "/v2" if request.url.path.startswith("/v2") else "/api/v1"


class RegistryController(Controller):
    """Registered twice, once per prefix (see `registry_controllers`)."""

    path = "/v2"
    tags = ["registry"]
    include_in_schema = False

    @get(["/", ""])
    async def base(self, request: Request[Any, Any, Any]) -> Response[dict[str, str]]:
        await _principal(request)
        return Response({}, headers=API_VERSION)

    # ---- blobs ----

    @head(["/{org:str}/blobs/{digest:str}", "/{org:str}/{name:str}/blobs/{digest:str}"])
    async def blob_exists(
        self, request: Request[Any, Any, Any], org: str, digest: str
    ) -> Response[None]:
        principal = await _principal(request)
        size = await _registry(request).blob_size(principal, org, digest)
        return Response(
            None,
            headers={
                "Content-Length": str(size),
                "Docker-Content-Digest": digest,
                "Content-Type": OCTET,
            },
        )

    @get(["/{org:str}/blobs/{digest:str}", "/{org:str}/{name:str}/blobs/{digest:str}"])
    async def blob(self, request: Request[Any, Any, Any], org: str, digest: str) -> Response[bytes]:
        principal = await _principal(request)
        data = await _registry(request).blob(principal, org, digest)
        return Response(data, media_type=OCTET, headers={"Docker-Content-Digest": digest})

    @post("/{org:str}/{name:str}/blobs/uploads", status_code=202, request_max_body_size=None)
    async def start_upload(
        self, request: Request[Any, Any, Any], org: str, name: str, digest: str | None = None
    ) -> Response[None]:
        principal = await _principal(request)
        registry = _registry(request)
        tenant = await registry.org(principal, org, write=True)
        if digest is not None:  # monolithic upload: POST ?digest= with the whole blob
            await registry.put_blob(tenant, digest, await _body(request))
            return _blob_created(request, org, name, digest)
        upload_id = await registry.blobs.open_upload(tenant.id, f"{org}/{name}")
        return Response(
            None,
            status_code=202,
            headers={
                "Location": f"{_prefix(request)}/{org}/{name}/blobs/uploads/{upload_id}",
                "Docker-Upload-UUID": upload_id,
                "Range": "0-0",
            },
        )

    @patch(
        "/{org:str}/{name:str}/blobs/uploads/{upload_id:str}",
        status_code=202,
        request_max_body_size=None,
    )
    async def upload_chunk(
        self, request: Request[Any, Any, Any], org: str, name: str, upload_id: str
    ) -> Response[None]:
        principal = await _principal(request)
        registry = _registry(request)
        tenant = await registry.org(principal, org, write=True)
        try:
            received = await registry.blobs.append_upload(
                tenant.id, upload_id, await _body(request)
            )
        except UnknownUpload as exc:
            raise UploadUnknown(str(exc)) from exc
        return Response(
            None,
            status_code=202,
            headers={
                "Location": f"{_prefix(request)}/{org}/{name}/blobs/uploads/{upload_id}",
                "Docker-Upload-UUID": upload_id,
                "Range": f"0-{max(received - 1, 0)}",
            },
        )

    @get("/{org:str}/{name:str}/blobs/uploads/{upload_id:str}", status_code=204)
    async def upload_status(
        self, request: Request[Any, Any, Any], org: str, name: str, upload_id: str
    ) -> Response[None]:
        principal = await _principal(request)
        registry = _registry(request)
        tenant = await registry.org(principal, org, write=True)
        try:
            received = await registry.blobs.upload_size(tenant.id, upload_id)
        except UnknownUpload as exc:
            raise UploadUnknown(str(exc)) from exc
        return Response(
            None,
            status_code=204,
            headers={"Range": f"0-{max(received - 1, 0)}", "Docker-Upload-UUID": upload_id},
        )

    @put(
        "/{org:str}/{name:str}/blobs/uploads/{upload_id:str}",
        status_code=201,
        request_max_body_size=None,
    )
    async def finish_upload(
        self,
        request: Request[Any, Any, Any],
        org: str,
        name: str,
        upload_id: str,
        digest: str | None = None,
    ) -> Response[None]:
        principal = await _principal(request)
        registry = _registry(request)
        tenant = await registry.org(principal, org, write=True)
        if digest is None:
            raise BadDigest("finishing an upload needs ?digest=sha256:<hex>")
        try:
            await registry.blobs.finish_upload(tenant.id, upload_id, digest, await _body(request))
        except UnknownUpload as exc:
            raise UploadUnknown(str(exc)) from exc
        except DigestInvalid as exc:
            raise BadDigest(str(exc)) from exc
        return _blob_created(request, org, name, digest)

    # ---- manifests and tags ----

    @put(
        "/{org:str}/{name:str}/manifests/{reference:str}",
        status_code=201,
        request_max_body_size=None,
    )
    async def put_manifest(
        self, request: Request[Any, Any, Any], org: str, name: str, reference: str
    ) -> Response[None]:
        principal = await _principal(request)
        digest = await _registry(request).push_manifest(
            principal,
            org,
            name,
            reference,
            await _body(request),
            request.scope.get("state", {}).get("request_id"),
        )
        return Response(
            None,
            status_code=201,
            headers={
                "Location": f"{_prefix(request)}/{org}/{name}/manifests/{digest}",
                "Docker-Content-Digest": digest,
            },
        )

    @get("/{org:str}/{name:str}/manifests/{reference:str}")
    async def get_manifest(
        self, request: Request[Any, Any, Any], org: str, name: str, reference: str
    ) -> Response[bytes]:
        principal = await _principal(request)
        digest, data = await _registry(request).manifest(principal, org, name, reference)
        return Response(
            data, media_type=MEDIA_OCI_MANIFEST, headers={"Docker-Content-Digest": digest}
        )

    @head("/{org:str}/{name:str}/manifests/{reference:str}")
    async def manifest_exists(
        self, request: Request[Any, Any, Any], org: str, name: str, reference: str
    ) -> Response[None]:
        principal = await _principal(request)
        digest, data = await _registry(request).manifest(principal, org, name, reference)
        return Response(
            None,
            headers={
                "Docker-Content-Digest": digest,
                "Content-Length": str(len(data)),
                "Content-Type": MEDIA_OCI_MANIFEST,
            },
        )

    @get("/{org:str}/{name:str}/tags/list")
    async def list_tags(
        self, request: Request[Any, Any, Any], org: str, name: str
    ) -> dict[str, Any]:
        principal = await _principal(request)
        return {
            "name": f"{org}/{name}",
            "tags": await _registry(request).tags(principal, org, name),
        }


def _blob_created(
    request: Request[Any, Any, Any], org: str, name: str, digest: str
) -> Response[None]:
    return Response(
        None,
        status_code=201,
        headers={
            "Location": f"{_prefix(request)}/{org}/{name}/blobs/{digest}",
            "Docker-Content-Digest": digest,
        },
    )


class ClientRegistryController(RegistryController):
    """The same registry where `dn` looks for it: `/api/v1/<org>/...`."""

    path = "/api/v1"

    @get(["/", ""], include_in_schema=False)
    async def base(self, request: Request[Any, Any, Any]) -> Response[dict[str, str]]:
        raise ApiError(404, "no such route")
