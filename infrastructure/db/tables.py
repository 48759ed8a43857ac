"""Every table of the service, registered on one MetaData (what Alembic compares against)."""

from infrastructure.db import (
    execution_tables,
    idempotency_tables,
    registry_tables,
    store_tables,
)
from infrastructure.db.metadata import metadata
from infrastructure.identity import tables as identity_tables

__all__ = [
    "execution_tables",
    "idempotency_tables",
    "identity_tables",
    "metadata",
    "registry_tables",
    "store_tables",
]
