"""What the dashboard's pages show, gathered from the same read models and services as the
API (never through HTTP): one function per page, returning the template's context."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

from litestar import Request

from app.api.context import container_of, evaluation_in, item_in
from app.api.schemas import HistoryEvent, history_event
from app.auth import Scope
from app.errors import ApiError
from app.services.errors import NotFound
from app.services.time_travel import PastEvaluation, evaluation_as_of, parse_as_of
from app.web import charts
from domain import analytics
from domain.audit_chain import Finding, check_events
from domain.evaluation import EVALUATION_STATUSES, TERMINAL_STATUSES, chosen_agent
from domain.item import ITEM_STATUSES, TERMINAL, VERDICTS
from domain.projections import EvaluationView, ItemView
from infrastructure.audit.wire import link_of
from infrastructure.eventstore import RecordedEvent

PAGE_SIZE = 25
# Item states in the order the progress bar draws them.
BAR_ORDER = (
    "passed",
    "failed",
    "errored",
    "timed_out",
    "infra_error",
    "cancelled",
    "running",
    "claimed",
    "queued",
)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def layout(tenant: Scope) -> dict[str, Any]:
    principal = tenant.principal
    return {
        "org": tenant.org,
        "ws": tenant.workspace,
        "user": principal.user,
        "role": principal.role_in(tenant.org.id) or "none",
        "can_create": principal.can_create(tenant.org.id, tenant.workspace.id),
        "base": f"/w/{tenant.org.key}/{tenant.workspace.key}",
    }


def can_manage(tenant: Scope, view: EvaluationView) -> bool:
    created_by = view.created_by.user_id if view.created_by else None
    return tenant.principal.can_manage(tenant.org.id, tenant.workspace.id, created_by)


def progress(view: EvaluationView) -> list[dict[str, Any]]:
    """Segments of the item-state bar: state, count and share of the width."""
    total = max(1, view.dataset_size)
    ordered = [s for s in BAR_ORDER if view.item_counts.get(s)]
    ordered += [s for s in view.item_counts if s not in BAR_ORDER and view.item_counts[s]]
    return [
        {"state": s, "count": view.item_counts[s], "percent": 100 * view.item_counts[s] / total}
        for s in ordered
    ]


def summary(view: EvaluationView) -> dict[str, Any]:
    """One evaluation as a row of the list (pass rate from its counts, as analytics has it)."""
    passed = view.item_counts.get("passed", 0)
    failed = view.item_counts.get("failed", 0)
    done = sum(n for s, n in view.item_counts.items() if s in TERMINAL)
    return {
        "view": view,
        "agent": chosen_agent(view.config.agent_type, view.config.capability),
        "progress": progress(view),
        "done": done,
        "pass_rate": passed / (passed + failed) if passed + failed else None,
        "ci": analytics.wilson_interval(passed, passed + failed),
        "terminal": view.status in TERMINAL_STATUSES,
    }


async def project_id_of(request: Request[Any, Any, Any], tenant: Scope, key: str | None) -> str:
    """A project named by key (dn's links) or id; unknown: 404."""
    identity = container_of(request).identity
    if not key:
        return ""
    project = await identity.get_project_by_key(tenant.workspace.id, key)
    if project is None and _is_uuid(key):
        project = await identity.get_project(tenant.workspace.id, key)
    if project is None:
        raise ApiError(404, f"project {key!r} not found")
    return project.id


async def evaluation_list(
    request: Request[Any, Any, Any],
    tenant: Scope,
    *,
    page: int,
    status: str | None,
    project: str | None,
) -> dict[str, Any]:
    if status is not None and status not in EVALUATION_STATUSES:
        raise ApiError(400, f"status must be one of {', '.join(EVALUATION_STATUSES)}")
    project_id = await project_id_of(request, tenant, project) or None
    found = await container_of(request).queries.list_evaluations(
        tenant.workspace.id, page=page, page_size=PAGE_SIZE, status=status, project_id=project_id
    )
    pages = max(1, -(-found.total // PAGE_SIZE))
    rows = [summary(v) for v in found.items]
    return {
        **layout(tenant),
        "rows": rows,
        "total": found.total,
        "page": page,
        "pages": pages,
        "status": status or "",
        "project": project or "",
        "statuses": EVALUATION_STATUSES,
        "live": any(not r["terminal"] for r in rows),
    }


def _grouped_errors(items: list[ItemView]) -> list[tuple[str, int, list[ItemView]]]:
    groups: dict[str, list[ItemView]] = {}
    for item in items:
        if item.error and item.status not in VERDICTS:
            groups.setdefault(item.error, []).append(item)
    return sorted(((e, len(g), g) for e, g in groups.items()), key=lambda x: -x[1])


async def evaluation_page(
    request: Request[Any, Any, Any], tenant: Scope, raw_id: str, as_of: str | None = None
) -> dict[str, Any]:
    """The evaluation now, or (`as_of`: a position or an RFC 3339 time) as it was then, folded
    by the same service as the API's `?as_of=`; a past state offers no live updates nor actions."""
    view = await evaluation_in(request, tenant, raw_id)
    past: PastEvaluation | None = None
    if as_of is not None:
        queries = container_of(request).queries
        past = await evaluation_as_of(queries, view.id, parse_as_of(as_of))
        view, items = past.evaluation, past.items
    else:
        items = await container_of(request).queries.items(view.id)
    result = analytics.compute(view, items)
    return {
        **layout(tenant),
        "e": summary(view),
        "view": view,
        "items": items,
        "analytics": result,
        "chart": charts.pass_rate_chart(result),
        "histogram": charts.histogram(charts.durations_seconds(items)),
        "errors": _grouped_errors(items),
        "can_manage": past is None and can_manage(tenant, view),
        "past": past,
        "retryable": any(i.status in TERMINAL - {"passed", "failed"} for i in items)
        or any(i.status == "failed" for i in items),
        "item_statuses": ITEM_STATUSES,
    }


def _event_summary(event: HistoryEvent) -> str:
    data = event.data if isinstance(event.data, dict) else {}
    keep = ("status", "passed", "error", "worker_id", "reason", "retry_count", "isolation")
    parts = []
    for key in keep:
        value = data.get(key)
        if isinstance(value, dict):  # e.g. the sandbox's isolation report: its level says it
            value = value.get("level")
        if value not in (None, "", {}):
            parts.append(f"{key}={value}")
    return ", ".join(parts)


async def _history_records(
    request: Request[Any, Any, Any], view: EvaluationView
) -> list[RecordedEvent]:
    queries = container_of(request).queries
    records: list[RecordedEvent] = []
    after = 0
    while True:
        page = await queries.evaluation_history(view.id, after_position=after, limit=1000)
        records.extend(page)
        if len(page) < 1000:
            return records
        after = page[-1].position


async def history(
    request: Request[Any, Any, Any], view: EvaluationView, stream_id: str | None = None
) -> list[dict[str, Any]]:
    """The evaluation's events in commit order (or one item's), each with a short summary."""
    events = [history_event(r) for r in await _history_records(request, view)]
    return [
        {"event": e, "summary": _event_summary(e)}
        for e in events
        if stream_id is None or e.stream_id == stream_id
    ]


def _chain_findings(records: list[RecordedEvent]) -> list[Finding]:
    return check_events(link_of(r) for r in records)


async def history_page(
    request: Request[Any, Any, Any], tenant: Scope, raw_id: str
) -> dict[str, Any]:
    """The evaluation's events with the hash-chain check of each (domain.audit_chain), the
    first bad one named; every row links to the evaluation as of its position."""
    view = await evaluation_in(request, tenant, raw_id)
    records = await _history_records(request, view)
    # Hashing thousands of events is CPU work: off the event loop.
    findings = await asyncio.to_thread(_chain_findings, records)
    bad = {f.position: f for f in findings}
    rows = []
    for record in records:
        event = history_event(record)
        rows.append(
            {"event": event, "summary": _event_summary(event), "finding": bad.get(record.position)}
        )
    return {
        **layout(tenant),
        "view": view,
        "events": rows,
        "findings": findings,
        "first_finding": findings[0] if findings else None,
    }


async def item_page(
    request: Request[Any, Any, Any],
    tenant: Scope,
    raw_id: str,
    raw_item: str,
    as_of: str | None = None,
) -> dict[str, Any]:
    """One item now, or as of a position or time (its state folded like the evaluation's, its
    timeline up to that position, its transcript's messages recorded by then)."""
    container = container_of(request)
    view = await evaluation_in(request, tenant, raw_id)
    item = await item_in(request, view, raw_item)
    past: PastEvaluation | None = None
    if as_of is not None:
        past = await evaluation_as_of(container.queries, view.id, parse_as_of(as_of))
        then = past.item(item.id)
        if then is None:
            raise NotFound(f"item {raw_item!r} as of {as_of!r} (it did not exist yet)")
        view, item = past.evaluation, then
    messages = (
        await container.queue.transcript(item.session_id, after_seq=0, limit=2000)
        if item.session_id
        else []
    )
    timeline = await history(request, view, item.id)
    if past is not None:
        until = datetime.fromisoformat(past.recorded_at)
        timeline = [t for t in timeline if t["event"].position <= past.position]
        messages = [m for m in messages if datetime.fromisoformat(m.created_at) <= until]
    return {
        **layout(tenant),
        "view": view,
        "item": item,
        "timeline": timeline,
        "messages": messages,
        "terminal": item.status in TERMINAL,
        "past": past,
    }


async def compare(
    request: Request[Any, Any, Any], tenant: Scope, left: str, right: str
) -> dict[str, Any]:
    """Two evaluations task by task: each side's passed/total, and where they differ."""
    queries = container_of(request).queries
    sides = []
    for raw in (left, right):
        view = await evaluation_in(request, tenant, raw)
        sides.append((view, analytics.compute(view, await queries.items(view.id))))
    tables = [
        {b.task_name: b for b in result.analytics_snapshot.task_breakdown} for _, result in sides
    ]
    rows = []
    for task in sorted(set(tables[0]) | set(tables[1])):
        a, b = tables[0].get(task), tables[1].get(task)
        a_pass = a is not None and a.total_samples > 0 and a.passed_count == a.total_samples
        b_pass = b is not None and b.total_samples > 0 and b.passed_count == b.total_samples
        change = "same"
        if a is None or b is None:
            change = "only in one"
        elif a_pass and not b_pass:
            change = "regressed"
        elif b_pass and not a_pass:
            change = "fixed"
        rows.append({"task": task, "a": a, "b": b, "change": change})
    return {**layout(tenant), "sides": sides, "rows": rows}
