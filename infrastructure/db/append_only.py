"""Database-enforced rules of the event log, installed by migrations.

- UPDATE, DELETE (and TRUNCATE on PostgreSQL) of `events` fail: the log is append-only.
- An event's stream_version must directly follow the stream's current version. Together with
  the unique (stream_type, stream_id, stream_version) this makes an append with expected
  version N succeed exactly when the stream is at N, without an extra read.
"""

from __future__ import annotations

VERSION_GAP_MESSAGE = "assay:stream-version-gap"
APPEND_ONLY_MESSAGE = "assay:events-are-append-only"

SQLITE = [
    f"""CREATE TRIGGER events_no_update BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END""",
    f"""CREATE TRIGGER events_no_delete BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END""",
    f"""CREATE TRIGGER events_contiguous_versions BEFORE INSERT ON events
        WHEN NEW.stream_version <> 1 AND NOT EXISTS (
            SELECT 1 FROM events WHERE stream_type = NEW.stream_type
            AND stream_id = NEW.stream_id AND stream_version = NEW.stream_version - 1)
        BEGIN SELECT RAISE(ABORT, '{VERSION_GAP_MESSAGE}'); END""",
]

POSTGRESQL = [
    f"""CREATE FUNCTION events_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}'; END $$""",
    """CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON events
        FOR EACH ROW EXECUTE FUNCTION events_reject_change()""",
    """CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
        FOR EACH STATEMENT EXECUTE FUNCTION events_reject_change()""",
    f"""CREATE FUNCTION events_check_version() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.stream_version <> 1 AND NOT EXISTS (
                SELECT 1 FROM events WHERE stream_type = NEW.stream_type
                AND stream_id = NEW.stream_id AND stream_version = NEW.stream_version - 1)
            THEN RAISE EXCEPTION '{VERSION_GAP_MESSAGE}';
            END IF;
            RETURN NEW;
        END $$""",
    """CREATE TRIGGER events_contiguous_versions BEFORE INSERT ON events
        FOR EACH ROW EXECUTE FUNCTION events_check_version()""",
]

DROP_SQLITE = [
    "DROP TRIGGER IF EXISTS events_no_update",
    "DROP TRIGGER IF EXISTS events_no_delete",
    "DROP TRIGGER IF EXISTS events_contiguous_versions",
]
DROP_POSTGRESQL = [
    "DROP TRIGGER IF EXISTS events_no_update_delete ON events",
    "DROP TRIGGER IF EXISTS events_no_truncate ON events",
    "DROP TRIGGER IF EXISTS events_contiguous_versions ON events",
    "DROP FUNCTION IF EXISTS events_reject_change()",
    "DROP FUNCTION IF EXISTS events_check_version()",
]
