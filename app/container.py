"""Everything a running server holds: built once in `create_app`, closed at shutdown."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth import Authenticator
from app.services.evaluations import EvaluationService
from infrastructure.db.engine import create_engine
from infrastructure.eventstore import EventStore
from infrastructure.identity.crypto import load_cipher
from infrastructure.identity.store import IdentityStore
from infrastructure.queries import ReadModelQueries
from infrastructure.readmodels import Projector
from infrastructure.settings import Settings
from infrastructure.tasks import TaskCatalog, load_catalog


@dataclass
class Container:
    settings: Settings
    engine: AsyncEngine
    store: EventStore
    queries: ReadModelQueries
    identity: IdentityStore
    authenticator: Authenticator
    catalog: TaskCatalog
    evaluations: EvaluationService

    @classmethod
    def build(cls, settings: Settings) -> Container:
        engine = create_engine(settings.database_url)
        store = EventStore(engine, in_transaction=Projector())
        queries = ReadModelQueries(engine)
        identity = IdentityStore(engine, load_cipher(settings))
        catalog = load_catalog(settings.task_paths)
        return cls(
            settings=settings,
            engine=engine,
            store=store,
            queries=queries,
            identity=identity,
            authenticator=Authenticator(identity, settings.auth_cache_seconds),
            catalog=catalog,
            evaluations=EvaluationService(
                store=store,
                queries=queries,
                identity=identity,
                catalog=catalog,
                settings=settings,
            ),
        )

    async def close(self) -> None:
        await self.store.close()
        await self.engine.dispose()
