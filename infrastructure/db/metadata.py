"""The one SQLAlchemy MetaData every table of the service registers on (Alembic reads it)."""

from sqlalchemy import MetaData

# Deterministic constraint names, so Alembic migrations can refer to them on both dialects.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)
