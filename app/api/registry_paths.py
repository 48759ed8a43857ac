"""Which request paths are the OCI registry's (their errors take the OCI shape, and their
bodies are bytes rather than JSON).

`dn task push/pull` address the registry at the server root under `/api/v1/<org>/...`
(`dreadnode/packaging/oci.py`); standard OCI clients use `/v2/<org>/<name>/...`. Both are served.
"""

from __future__ import annotations

import re

REGISTRY_PREFIXES = ("/v2", "/api/v1")

_REGISTRY_PATH = re.compile(
    r"\A/v2/?\Z"
    r"|\A/(?:v2|api/v1)/[^/]+/(?:blobs/|[^/]+/(?:blobs/|manifests/|tags/list/?\Z))"
)


def is_registry_path(path: str) -> bool:
    if path.startswith("/api/v1/org/") or path.startswith("/api/v1/user"):
        return False
    return _REGISTRY_PATH.match(path) is not None
