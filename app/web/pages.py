"""The dashboard's pages (GET): evaluations, one evaluation and its live fragment, one item,
history, compare, tasks. Every page resolves the caller like the API does (web_scope) and reads
through app/web/views.py."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.params import Parameter
from litestar.response import Redirect, Template

from app.api.context import container_of
from app.web import views
from app.web.session import NotSignedIn, here, signed_in, web_scope

PageNumber = Annotated[int, Parameter(ge=1)]


class WorkspacePages(Controller):
    path = "/w/{org:str}/{ws:str}"
    include_in_schema = False

    @get("/")
    async def evaluations(
        self,
        request: Request[Any, Any, Any],
        org: str,
        ws: str,
        page: PageNumber = 1,
        status: str | None = None,
        project: str | None = None,
    ) -> Template:
        tenant = await web_scope(request, org, ws)
        context = await views.evaluation_list(
            request, tenant, page=page, status=status or None, project=project
        )
        return Template("evaluations.html", context=context)

    @get("/rows")
    async def evaluation_rows(
        self,
        request: Request[Any, Any, Any],
        org: str,
        ws: str,
        page: PageNumber = 1,
        status: str | None = None,
        project: str | None = None,
    ) -> Template:
        """The list's rows alone, which the page fetches again while any row is running."""
        tenant = await web_scope(request, org, ws)
        context = await views.evaluation_list(
            request, tenant, page=page, status=status or None, project=project
        )
        return Template("_rows.html", context=context)

    @get("/evaluations/{evaluation_id:str}")
    async def evaluation(
        self,
        request: Request[Any, Any, Any],
        org: str,
        ws: str,
        evaluation_id: str,
        as_of: str | None = None,
    ) -> Template:
        """The evaluation now, or as of a log position or time (`?as_of=`, from History)."""
        tenant = await web_scope(request, org, ws)
        context = await views.evaluation_page(request, tenant, evaluation_id, as_of)
        return Template("evaluation.html", context=context)

    @get("/evaluations/{evaluation_id:str}/live")
    async def evaluation_live(
        self, request: Request[Any, Any, Any], org: str, ws: str, evaluation_id: str
    ) -> Template:
        """The parts of the evaluation page that change while it runs (polled, or fetched on
        each server-sent event)."""
        tenant = await web_scope(request, org, ws)
        context = await views.evaluation_page(request, tenant, evaluation_id)
        return Template("_live.html", context=context)

    @get("/evaluations/{evaluation_id:str}/items/{item_id:str}")
    async def item(
        self,
        request: Request[Any, Any, Any],
        org: str,
        ws: str,
        evaluation_id: str,
        item_id: str,
        as_of: str | None = None,
    ) -> Template:
        tenant = await web_scope(request, org, ws)
        context = await views.item_page(request, tenant, evaluation_id, item_id, as_of)
        return Template("item.html", context=context)

    @get("/evaluations/{evaluation_id:str}/items/{item_id:str}/live")
    async def item_live(
        self, request: Request[Any, Any, Any], org: str, ws: str, evaluation_id: str, item_id: str
    ) -> Template:
        """The item page's verdict, timeline and transcript, polled while the item runs."""
        tenant = await web_scope(request, org, ws)
        context = await views.item_page(request, tenant, evaluation_id, item_id)
        return Template("_item_live.html", context=context)

    @get("/evaluations/{evaluation_id:str}/history")
    async def history(
        self, request: Request[Any, Any, Any], org: str, ws: str, evaluation_id: str
    ) -> Template:
        tenant = await web_scope(request, org, ws)
        context = await views.history_page(request, tenant, evaluation_id)
        return Template("history.html", context=context)

    @get("/compare")
    async def compare(
        self,
        request: Request[Any, Any, Any],
        org: str,
        ws: str,
        a: str | None = None,
        b: str | None = None,
    ) -> Template:
        tenant = await web_scope(request, org, ws)
        if a and b:
            context = await views.compare(request, tenant, a, b)
        else:
            listed = await container_of(request).queries.list_evaluations(
                tenant.workspace.id, page=1, page_size=100, status=None, project_id=None
            )
            context = {**views.layout(tenant), "choices": listed.items, "sides": None}
        return Template("compare.html", context={**context, "a": a or "", "b": b or ""})

    @get("/tasks")
    async def tasks(self, request: Request[Any, Any, Any], org: str, ws: str) -> Template:
        tenant = await web_scope(request, org, ws)
        entries = await container_of(request).registry.entries(
            tenant.principal, tenant.org, include_public=False
        )
        return Template("tasks.html", context={**views.layout(tenant), "tasks": entries})


@get("/", include_in_schema=False)
async def home(request: Request[Any, Any, Any]) -> Redirect:
    """The caller's first workspace (a workspace key: its own)."""
    principal = await signed_in(request)
    identity = container_of(request).identity
    if principal.key_workspace_id is not None:
        workspace = await identity.get_workspace_by_id(principal.key_workspace_id)
        org = await identity.get_org(workspace.org_id) if workspace else None
        if workspace and org:
            return Redirect(f"/w/{org.key}/{workspace.key}/")
    for org_id in sorted(principal.roles):
        org = await identity.get_org(org_id)
        workspaces = await identity.list_workspaces(org_id)
        if org and workspaces:
            return Redirect(f"/w/{org.key}/{workspaces[0].key}/")
    request.clear_session()
    raise NotSignedIn("/", "this key belongs to no organization with a workspace")


@get("/{org:str}/evaluation", include_in_schema=False)
async def dn_link(
    request: Request[Any, Any, Any],
    org: str,
    workspace: str | None = None,
    project: str | None = None,
    eval: str | None = None,
) -> Redirect:
    """The "View on web" link every `dn evaluation` command prints."""
    principal = await signed_in(request)
    ws = workspace
    if ws is None:
        org_row = await container_of(request).authenticator.org(principal, org)
        workspaces = await container_of(request).identity.list_workspaces(org_row.id)
        if not workspaces:
            raise NotSignedIn(here(request), f"organization {org!r} has no workspace")
        ws = workspaces[0].key
    await web_scope(request, org, ws)  # a 404 page here rather than after the redirect
    if eval:
        return Redirect(f"/w/{org}/{ws}/evaluations/{eval}")
    return Redirect(f"/w/{org}/{ws}/" + (f"?project={project}" if project else ""))
