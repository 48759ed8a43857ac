"""The dashboard's forms (POST, each behind a CSRF token): sign in and out, start, cancel and
retry-failed. The commands go to the same services as the API's, with the same checks: a
viewer's forged cancel is refused by EvaluationService exactly as its API call would be."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.response import Redirect, Template

from app.api.context import command_context, container_of, evaluation_id_in
from app.api.schemas import CreateEvaluationRequest
from app.errors import ApiError
from app.services.errors import InvalidInput, NotFound
from app.web import views
from app.web.session import SESSION_KEY, safe_next, web_scope
from infrastructure.agents.registry import agent_names

FORM_FIELDS = ("name", "task_names", "agent", "model", "concurrency", "task_timeout_sec")


@get("/login", include_in_schema=False)
async def login_page(next: str | None = None, reason: str | None = None) -> Template:
    return Template("login.html", context={"next": safe_next(next), "error": reason})


@post("/login", include_in_schema=False, status_code=303)
async def login(request: Request[Any, Any, Any]) -> Redirect | Template:
    form = await request.form()
    raw = str(form.get("api_key", "")).strip()
    next_url = safe_next(str(form.get("next", "/")))
    try:
        await container_of(request).authenticator.principal_of_key(raw)
    except ApiError:
        return Template(
            "login.html",
            context={"next": next_url, "error": "That key is unknown or revoked."},
            status_code=401,
        )
    request.set_session({SESSION_KEY: raw})
    return Redirect(next_url, status_code=303)


@post("/logout", include_in_schema=False, status_code=303)
async def logout(request: Request[Any, Any, Any]) -> Redirect:
    request.clear_session()
    return Redirect("/login", status_code=303)


def _form_request(form: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The form as CreateEvaluationRequest's fields, and errors of fields that are not even
    numbers (everything else is the service's to judge)."""
    errors: dict[str, str] = {}
    body: dict[str, Any] = {"name": str(form.get("name", "")).strip()}
    body["task_names"] = [str(t) for t in form.getall("task_names", []) if str(t).strip()]
    agent = str(form.get("agent", "")).strip()
    if agent:
        body["agent_type"] = agent
    model = str(form.get("model", "")).strip()
    if model:
        body["model"] = model
    for field in ("concurrency", "task_timeout_sec"):
        value = str(form.get(field, "")).strip()
        if value:
            try:
                body[field] = int(value)
            except ValueError:
                errors[field] = "must be a whole number"
    project = str(form.get("project_id", "")).strip()
    if project:
        body["project_id"] = project
    return body, errors


def _field_of(loc: list[str | int]) -> str:
    """Which form field an API error's location concerns (the body as a whole: that no task
    was named, which the task list answers)."""
    names = [str(part) for part in loc if isinstance(part, str) and part != "body"]
    field = names[0] if names else "task_names"
    if field in ("agent_type", "capability"):
        return "agent"
    if field in ("project_id", "runtime_id", "secret_ids"):
        return "project_id" if field == "project_id" else "form"
    return field if field in FORM_FIELDS else "form"


class StartForm(Controller):
    path = "/w/{org:str}/{ws:str}"
    include_in_schema = False

    async def _render(
        self,
        request: Request[Any, Any, Any],
        org: str,
        ws: str,
        values: dict[str, Any],
        errors: dict[str, list[str]],
        status_code: int = 200,
    ) -> Template:
        tenant = await web_scope(request, org, ws)
        entries = await container_of(request).registry.entries(
            tenant.principal, tenant.org, include_public=False
        )
        context = {
            **views.layout(tenant),
            "tasks": entries,
            "agents": agent_names(),
            "values": values,
            "errors": errors,
        }
        return Template("new.html", context=context, status_code=status_code)

    @get("/new")
    async def new(
        self, request: Request[Any, Any, Any], org: str, ws: str, task: str | None = None
    ) -> Template:
        values = {"agent": "oracle", "concurrency": 4, "task_names": [task] if task else []}
        return await self._render(request, org, ws, values, {})

    @post("/new", status_code=303)
    async def create(self, request: Request[Any, Any, Any], org: str, ws: str) -> Any:
        tenant = await web_scope(request, org, ws)
        form = await request.form()
        body, bad = _form_request(form)
        values = {**body, "agent": body.get("agent_type", "")}  # as typed, before lookups
        errors: dict[str, list[str]] = {k: [v] for k, v in bad.items()}
        if not errors and body.get("project_id"):
            try:  # a project by key, as the list's filter takes it
                body["project_id"] = await views.project_id_of(request, tenant, body["project_id"])
            except ApiError as error:
                errors["project_id"] = [error.detail]
        if not errors:
            try:
                data = msgspec.convert(body, CreateEvaluationRequest)
            except msgspec.ValidationError as error:
                field = str(error).rsplit("$.", 1)[-1].split("`")[0].split("[")[0]
                errors.setdefault(field if field in FORM_FIELDS else "form", []).append(str(error))
        if not errors:
            try:
                view, _ = await container_of(request).evaluations.create_reporting(
                    command_context(request, tenant), data
                )
            except InvalidInput as error:
                for problem in error.problems:
                    errors.setdefault(_field_of(problem.loc), []).append(problem.msg)
            except NotFound as error:
                field = "project_id" if "project" in str(error) else "form"
                errors.setdefault(field, []).append(str(error))
            else:
                return Redirect(f"/w/{org}/{ws}/evaluations/{view.id}", status_code=303)
        return await self._render(request, org, ws, values, errors, status_code=422)

    @post("/evaluations/{evaluation_id:str}/cancel", status_code=303)
    async def cancel(
        self, request: Request[Any, Any, Any], org: str, ws: str, evaluation_id: str
    ) -> Redirect:
        tenant = await web_scope(request, org, ws)
        full_id = await evaluation_id_in(request, tenant, evaluation_id)
        await container_of(request).evaluations.cancel(command_context(request, tenant), full_id)
        return Redirect(f"/w/{org}/{ws}/evaluations/{full_id}", status_code=303)

    @post("/evaluations/{evaluation_id:str}/retry-failed", status_code=303)
    async def retry_failed(
        self, request: Request[Any, Any, Any], org: str, ws: str, evaluation_id: str
    ) -> Redirect:
        tenant = await web_scope(request, org, ws)
        full_id = await evaluation_id_in(request, tenant, evaluation_id)
        await container_of(request).evaluations.retry_failed(
            command_context(request, tenant), full_id
        )
        return Redirect(f"/w/{org}/{ws}/evaluations/{full_id}", status_code=303)
