"""Ceiling servers for scripts/bench_api.py: bare Litestar handlers over the raw driver.

Served like the real service (`uvicorn bench_ceilings:create_app --factory --app-dir scripts`),
configured by the JSON file named in BENCH_CEILING_CONFIG, which bench_api.py writes from rows
the real service produced, so both sides move the same bytes:

- POST .../evaluation decodes the same CreateEvaluationRequest body with msgspec (as a Litestar
  `data` parameter, like the service) and, in ONE transaction, inserts the same rows the
  service writes for it (the events, the evaluation row, the item rows; same columns, same
  JSON document sizes) through stdlib sqlite3 (WAL, synchronous=NORMAL, BEGIN IMMEDIATE) or an
  asyncpg pool, then answers 201 with a body the size of the service's.
- GET .../evaluation/{id} answers the service's JSON bytes for that id from a dict in memory.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
from litestar import Litestar, Response, get, post
from litestar.enums import MediaType
from litestar.exceptions import NotFoundException

from app.api.schemas import CreateEvaluationRequest

EVENT_COLUMNS = (
    "event_id, stream_type, stream_id, stream_version, event_type, schema_version, "
    "data, metadata, recorded_at"
)
SQLITE_EVENT = f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
SQLITE_EVALUATION = (
    "INSERT INTO evaluations (id, org_id, workspace_id, project_id, created_by, status, "
    "created_at, last_position, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
SQLITE_ITEM = (
    "INSERT INTO items (id, evaluation_id, position, status, last_position, doc) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
PG_EVENTS = (
    f"INSERT INTO events ({EVENT_COLUMNS}) SELECT * FROM unnest("
    "$1::varchar[], $2::varchar[], $3::varchar[], $4::int[], $5::varchar[], $6::int[], "
    "$7::text[], $8::text[], $9::varchar[]) RETURNING position"
)
PG_EVALUATION = (
    "INSERT INTO evaluations (id, org_id, workspace_id, project_id, created_by, status, "
    "created_at, last_position, doc) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)
PG_ITEMS = (
    "INSERT INTO items (id, evaluation_id, position, status, last_position, doc) "
    "SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::int[], $4::varchar[], "
    "$5::bigint[], $6::text[])"
)


class Ceiling:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.backend: str = config["backend"]
        self.events: list[dict[str, Any]] = config["events"]
        self.evaluation: dict[str, Any] = config["evaluation"]
        self.items: list[dict[str, Any]] = config["items"]
        self.create_body = config["create_response"].encode()
        self.docs = {k: v.encode() for k, v in config["get_docs"].items()}
        self.sqlite: sqlite3.Connection | None = None
        self.pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        if self.backend == "sqlite":
            conn = sqlite3.connect(self.config["sqlite_path"], isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            self.sqlite = conn
        else:
            self.pool = await asyncpg.create_pool(
                self.config["pg_dsn"],
                min_size=self.config.get("pool_size", 20),
                max_size=self.config.get("pool_size", 20),
            )

    async def close(self) -> None:
        if self.sqlite is not None:
            self.sqlite.close()
        if self.pool is not None:
            await self.pool.close()

    def _rows(self) -> tuple[str, list[str], list[tuple[Any, ...]], str]:
        """Fresh ids for one evaluation; the event rows in insert order."""
        now = datetime.now(UTC).isoformat(timespec="microseconds")
        evaluation_id = str(uuid.uuid4())
        item_ids = [str(uuid.uuid4()) for _ in self.items]
        events = [
            (
                str(uuid.uuid4()),
                e["stream_type"],
                evaluation_id if e["item"] is None else item_ids[e["item"]],
                e["stream_version"],
                e["event_type"],
                e["schema_version"],
                e["data"],
                e["metadata"],
                now,
            )
            for e in self.events
        ]
        return evaluation_id, item_ids, events, now

    async def create(self) -> None:
        evaluation_id, item_ids, events, now = self._rows()
        ev = self.evaluation
        if self.sqlite is not None:
            conn = self.sqlite
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(SQLITE_EVENT, events)
                last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
                first = last - len(events) + 1
                positions = {e[2]: first + i for i, e in enumerate(events)}
                conn.execute(
                    SQLITE_EVALUATION,
                    (
                        evaluation_id,
                        ev["org_id"],
                        ev["workspace_id"],
                        ev["project_id"],
                        ev["created_by"],
                        ev["status"],
                        now,
                        last,
                        ev["doc"],
                    ),
                )
                conn.executemany(
                    SQLITE_ITEM,
                    [
                        (
                            item_id,
                            evaluation_id,
                            item["position"],
                            item["status"],
                            positions[item_id],
                            item["doc"],
                        )
                        for item_id, item in zip(item_ids, self.items, strict=True)
                    ],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return
        assert self.pool is not None
        columns = list(zip(*events, strict=True))
        async with self.pool.acquire() as conn, conn.transaction():
            returned = await conn.fetch(PG_EVENTS, *columns)
            positions = {e[2]: r[0] for e, r in zip(events, returned, strict=True)}
            await conn.execute(
                PG_EVALUATION,
                evaluation_id,
                ev["org_id"],
                ev["workspace_id"],
                ev["project_id"],
                ev["created_by"],
                ev["status"],
                now,
                max(positions.values()),
                ev["doc"],
            )
            await conn.execute(
                PG_ITEMS,
                item_ids,
                [evaluation_id] * len(item_ids),
                [i["position"] for i in self.items],
                [i["status"] for i in self.items],
                [positions[i] for i in item_ids],
                [i["doc"] for i in self.items],
            )


def create_app() -> Litestar:
    with open(os.environ["BENCH_CEILING_CONFIG"]) as handle:
        ceiling = Ceiling(json.load(handle))

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        await ceiling.open()
        try:
            yield
        finally:
            await ceiling.close()

    @post("/api/v1/org/{org:str}/ws/{ws:str}/evaluation", status_code=201)
    async def create_evaluation(
        org: str, ws: str, data: CreateEvaluationRequest
    ) -> Response[bytes]:
        await ceiling.create()
        return Response(ceiling.create_body, media_type=MediaType.JSON, status_code=201)

    @get("/api/v1/org/{org:str}/ws/{ws:str}/evaluation/{evaluation_id:str}")
    async def get_evaluation(org: str, ws: str, evaluation_id: str) -> Response[bytes]:
        doc = ceiling.docs.get(evaluation_id)
        if doc is None:
            raise NotFoundException()
        return Response(doc, media_type=MediaType.JSON)

    @get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return Litestar(
        route_handlers=[create_evaluation, get_evaluation, health], lifespan=[lifespan], debug=False
    )
