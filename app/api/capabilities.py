"""Capability routes under /api/v1/org/{org}: what `dn capability list/info` call.

Assay's capabilities are its built-in agents, the ones `--capability NAME` (or `agent_type`)
selects when creating an evaluation: `oracle`, `nop`, `openai`. They ship with the service,
so each has one version (the service's own), belongs to no org and is the same for every org;
there is no registry to publish to, so push, publish, delete and bundle download have no
route here.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any, Literal

import msgspec
from litestar import Controller, Request, get

from app.api.context import ListLimit, PageNumber, org_caller
from app.api.openapi import errors_for
from app.errors import not_found
from infrastructure.agents.registry import AGENTS, AgentSpec

AUTHOR = "Assay"
LICENSE = "built-in"


def _service_version() -> str:
    try:
        return importlib.metadata.version("assay")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "0.0.0"


VERSION = _service_version()


class CapabilitySecret(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    provider: str
    required: bool
    description: str


# What each agent can use beyond the evaluation itself.
KEYWORDS: dict[str, list[str]] = {
    "oracle": ["baseline", "reference-solution"],
    "nop": ["baseline", "negative-control"],
    "openai": ["llm", "tool-calling", "shell"],
}
SECRETS: dict[str, list[CapabilitySecret]] = {
    "openai": [
        CapabilitySecret(
            name="openai",
            provider="openai",
            # Endpoints on a private network often need no key.
            required=False,
            description=(
                "API key of the model endpoint: a secret of provider openai named in the "
                "evaluation's secret_ids (assay admin add-secret --provider openai)"
            ),
        )
    ]
}


class CapabilityResponse(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    version: str
    description: str
    is_public: bool
    org_key: str
    keywords: list[str]
    author_name: str
    license: str
    needs_model: bool
    component_counts: dict[str, int]
    secrets: list[CapabilitySecret]
    version_count: int
    versions: list[str]
    created_at: str | None
    updated_at: str | None


class CapabilityList(msgspec.Struct, frozen=True):
    capabilities: list[CapabilityResponse]
    total: int
    page: int
    limit: int


class CapabilityVersions(msgspec.Struct, frozen=True):
    name: str
    versions: list[str]


class FacetCount(msgspec.Struct, frozen=True):
    value: str
    count: int


class CapabilityFacets(msgspec.Struct, frozen=True):
    keywords: list[FacetCount]
    authors: list[FacetCount]
    licenses: list[FacetCount]


class CapabilityReadme(msgspec.Struct, frozen=True):
    name: str
    version: str
    content: str


def _response(spec: AgentSpec, org_key: str) -> CapabilityResponse:
    return CapabilityResponse(
        id=f"builtin:{spec.name}",
        name=spec.name,
        version=VERSION,
        description=spec.description,
        is_public=True,
        org_key=org_key,
        keywords=KEYWORDS.get(spec.name, []),
        author_name=AUTHOR,
        license=LICENSE,
        needs_model=spec.needs_model,
        component_counts={"agents": 1},
        secrets=SECRETS.get(spec.name, []),
        version_count=1,
        versions=[VERSION],
        # Built into the service: not created or updated through the API.
        created_at=None,
        updated_at=None,
    )


def _readme(spec: AgentSpec) -> str:
    lines = [
        f"# {spec.name}",
        "",
        spec.description,
        "",
        "## Use",
        "",
        "```bash",
        f"dn evaluation create my-eval --task find-the-flag --capability {spec.name}"
        + (" --model <model>" if spec.needs_model else ""),
        "```",
        "",
        "It needs a model: " + ("yes, the evaluation's `model`." if spec.needs_model else "no."),
    ]
    for secret in SECRETS.get(spec.name, []):
        need = "required" if secret.required else "optional"
        lines += ["", f"Secret `{secret.name}` ({need}): {secret.description}."]
    return "\n".join(lines) + "\n"


def _matches(spec: AgentSpec, name: str | None, search: str | None, keywords: list[str]) -> bool:
    if name is not None and spec.name != name:
        return False
    if search and search.lower() not in f"{spec.name} {spec.description}".lower():
        return False
    return all(k in KEYWORDS.get(spec.name, []) for k in keywords)


async def _org_key(request: Request[Any, Any, Any], org: str) -> str:
    return (await org_caller(request, org))[1].key


def _spec(name: str) -> AgentSpec:
    spec = AGENTS.get(name)
    if spec is None:
        raise not_found(f"capability {name!r}; known: {', '.join(sorted(AGENTS))}")
    return spec


def _versioned(name: str, version: str) -> AgentSpec:
    spec = _spec(name)
    if version != VERSION:
        raise not_found(f"capability {name}@{version} (the only version is {VERSION})")
    return spec


class CapabilityController(Controller):
    path = "/api/v1/org/{org:str}/capabilities"
    tags = ["capabilities"]

    @get("/", responses=errors_for(400, 401, 404, 426, 429))
    async def list_capabilities(
        self,
        request: Request[Any, Any, Any],
        org: str,
        name: str | None = None,
        search: str | None = None,
        keywords: list[str] | None = None,
        sort_dir: Literal["asc", "desc"] = "asc",
        page: PageNumber = 1,
        limit: ListLimit = 50,
    ) -> CapabilityList:
        """The agents an evaluation can select with `capability`, by name (`sort_dir`
        desc reverses)."""
        org_key = await _org_key(request, org)
        found = sorted(
            (s for s in AGENTS.values() if _matches(s, name, search, keywords or [])),
            key=lambda s: s.name,
            reverse=sort_dir == "desc",
        )
        start = (page - 1) * limit
        return CapabilityList(
            capabilities=[_response(s, org_key) for s in found[start : start + limit]],
            total=len(found),
            page=page,
            limit=limit,
        )

    @get("/facets", responses=errors_for(400, 401, 404, 426, 429))
    async def capability_facets(
        self,
        request: Request[Any, Any, Any],
        org: str,
        name: str | None = None,
        search: str | None = None,
        keywords: list[str] | None = None,
    ) -> CapabilityFacets:
        """Counts of the capabilities by keyword, author and license, for filtering."""
        await _org_key(request, org)
        found = [s for s in AGENTS.values() if _matches(s, name, search, keywords or [])]
        counts: dict[str, int] = {}
        for spec in found:
            for keyword in KEYWORDS.get(spec.name, []):
                counts[keyword] = counts.get(keyword, 0) + 1
        total = len(found)
        return CapabilityFacets(
            keywords=[FacetCount(k, counts[k]) for k in sorted(counts)],
            authors=[FacetCount(AUTHOR, total)] if total else [],
            licenses=[FacetCount(LICENSE, total)] if total else [],
        )

    @get("/{name:str}", responses=errors_for(401, 404, 426, 429))
    async def get_capability(
        self, request: Request[Any, Any, Any], org: str, name: str
    ) -> CapabilityResponse:
        """One capability (its only version)."""
        return _response(_spec(name), await _org_key(request, org))

    @get("/{name:str}/versions", responses=errors_for(401, 404, 426, 429))
    async def capability_versions(
        self, request: Request[Any, Any, Any], org: str, name: str
    ) -> CapabilityVersions:
        """Its versions, newest first (built-ins have one: the service's version)."""
        await _org_key(request, org)
        return CapabilityVersions(name=_spec(name).name, versions=[VERSION])

    @get("/{name:str}/readme", responses=errors_for(401, 404, 426, 429))
    async def capability_readme(
        self, request: Request[Any, Any, Any], org: str, name: str
    ) -> CapabilityReadme:
        """What it does and how to select it, as markdown."""
        await _org_key(request, org)
        spec = _spec(name)
        return CapabilityReadme(name=spec.name, version=VERSION, content=_readme(spec))

    @get("/{name:str}/{version:str}", responses=errors_for(401, 404, 426, 429))
    async def get_capability_version(
        self, request: Request[Any, Any, Any], org: str, name: str, version: str
    ) -> CapabilityResponse:
        """One capability at a version."""
        return _response(_versioned(name, version), await _org_key(request, org))

    @get("/{name:str}/{version:str}/readme", responses=errors_for(401, 404, 426, 429))
    async def capability_version_readme(
        self, request: Request[Any, Any, Any], org: str, name: str, version: str
    ) -> CapabilityReadme:
        """The readme at a version."""
        await _org_key(request, org)
        spec = _versioned(name, version)
        return CapabilityReadme(name=spec.name, version=VERSION, content=_readme(spec))
