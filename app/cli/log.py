"""`assay log`: export the event log (and, whole, the installation) as NDJSON; import it into an
empty database of either backend."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

import click
import msgspec
from cryptography.fernet import InvalidToken

from app.cli.audit import with_store
from infrastructure.audit.transfer import TransferError, export_lines, import_file
from infrastructure.eventstore import EventStore
from infrastructure.identity.crypto import SecretKeyMissing, load_cipher
from infrastructure.settings import Settings


@click.group("log")
def log_commands() -> None:
    """Move the log (and everything the log does not describe) between databases."""


@log_commands.command("export")
@click.option("--database-url", default=None)
@click.option("--org", default=None, help="only this organization's evaluations and items")
@click.option("--after", type=click.IntRange(min=0), default=0, help="only events after POS")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), default=None)
def export(database_url: str | None, org: str | None, after: int, output: Path | None) -> None:
    """NDJSON, one event per line with its hashes; unfiltered, identities first (importable)."""

    async def run(store: EventStore) -> None:
        out: BinaryIO = output.open("wb") if output is not None else sys.stdout.buffer
        try:
            async for line in export_lines(store, org=org, after=after):
                out.write(line)
        finally:
            if output is not None:
                out.close()
            else:
                out.flush()

    try:
        with_store(database_url, run)
    except TransferError as exc:
        raise click.ClickException(str(exc)) from exc


@log_commands.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False), default="-")
@click.option("--database-url", default=None)
def import_(file: Path, database_url: str | None) -> None:
    """Load a full export into an empty, migrated database; verify its chains; rebuild."""
    settings = Settings.from_env()
    if database_url is not None:
        settings = msgspec.structs.replace(settings, database_url=database_url)

    def readable(ciphertext: str) -> bool:
        # Asked only when the export holds secrets: the target needs the source's key then.
        try:
            cipher = load_cipher(settings)
        except (SecretKeyMissing, ValueError) as exc:
            raise TransferError(f"the export holds encrypted secrets: {exc}") from exc
        try:
            cipher.decrypt(ciphertext.encode("ascii"))
        except (InvalidToken, ValueError):
            return False
        return True

    with tempfile.TemporaryDirectory(prefix="assay-import-") as spool:
        if str(file) == "-":  # the file is read twice (checked, then loaded): keep stdin
            path = Path(spool) / "stdin.ndjson"
            with path.open("wb") as f:
                shutil.copyfileobj(sys.stdin.buffer, f)
        else:
            path = file
        started = time.perf_counter()
        try:
            report = with_store(
                settings.database_url,
                lambda store: import_file(store, path, secret_readable=readable),
            )
        except (TransferError, OSError) as exc:
            raise click.ClickException(str(exc)) from exc
        seconds = time.perf_counter() - started
    click.echo(
        f"imported {report.events} events (through position {report.last_position}) and "
        f"{report.records} records in {seconds:.1f}s "
        f"({report.events / max(seconds, 1e-9):,.0f} events/s); chains verified, "
        "read models rebuilt"
    )
