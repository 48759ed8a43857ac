"""Content-addressed storage of the task registry, outside the event log.

Blobs live in the database rather than in a folder: a PostgreSQL deployment runs workers on
several machines, and every one of them must fetch exactly the bundle an item names; a folder
would need a shared file system beside the database, the database is already shared and
backed up. Blobs are immutable by construction (the key is the sha256 of the bytes, checked
on every write). What a registry *did* (pushes, deletions, visibility) is in the log; this
holds only bytes, which must not go into events.

- `registry_blobs`: digest -> bytes.
- `registry_blob_orgs`: which org uploaded a blob (existence is answered per org, so one
  tenant cannot probe another's content by digest).
- `registry_uploads`: blob uploads in progress (POST, then PATCH chunks, then PUT).
"""

from __future__ import annotations

import sqlalchemy as sa

from infrastructure.db.metadata import metadata
from infrastructure.db.store_tables import ID, TIME

DIGEST = sa.String(80)  # "sha256:" + 64 hex

registry_blobs = sa.Table(
    "registry_blobs",
    metadata,
    sa.Column("digest", DIGEST, primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("created_at", TIME, nullable=False),
)

registry_blob_orgs = sa.Table(
    "registry_blob_orgs",
    metadata,
    sa.Column("org_id", ID, primary_key=True),
    sa.Column("digest", DIGEST, primary_key=True),
)

registry_uploads = sa.Table(
    "registry_uploads",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("org_id", ID, nullable=False),
    sa.Column("repository", sa.String(255), nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("created_at", TIME, nullable=False),
)
