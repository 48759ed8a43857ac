"""`assay audit`: check the log's hash chains, and print a checkpoint of their head."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click
import msgspec

from app.cli.checks import require_migrated
from app.composition import open_store
from domain.audit_chain import Checkpoint
from infrastructure.audit import verify as verifying
from infrastructure.db.engine import create_engine
from infrastructure.eventstore import EventStore
from infrastructure.settings import Settings

T = TypeVar("T")


@click.group("audit")
def audit_commands() -> None:
    """Tamper evidence of the event log (read-only; safe while the API is serving)."""


def with_store(database_url: str | None, run: Callable[[EventStore], Awaitable[T]]) -> T:
    """Run `run` with an event store on the migrated database (shared with `assay log`)."""
    url = database_url or Settings.from_env().database_url
    require_migrated(url)

    async def main() -> T:
        engine = create_engine(url)
        # The import appends (the rebuild's record): keep the read models in step.
        store, _leases = open_store(engine)
        try:
            return await run(store)
        finally:
            await store.close()
            await engine.dispose()

    return asyncio.run(main())


def _read_checkpoint(path: Path) -> Checkpoint:
    try:
        raw = json.loads(path.read_text())
        return Checkpoint(position=int(raw["position"]), chain_hash=str(raw["chain_hash"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise click.ClickException(
            f"{path}: not a checkpoint ({{position, chain_hash, at}}): {exc}"
        ) from exc


@audit_commands.command("verify")
@click.option("--database-url", default=None)
@click.option(
    "--checkpoint",
    "checkpoint_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="a file printed by `assay audit checkpoint`: also prove nothing up to it changed",
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
def verify(database_url: str | None, checkpoint_file: Path | None, as_json: bool) -> None:
    """Walk both hash chains; exit 0 when intact, 1 naming the first bad position."""
    checkpoint = _read_checkpoint(checkpoint_file) if checkpoint_file is not None else None
    outcome = with_store(database_url, lambda store: verifying.verify(store, checkpoint))
    finding = outcome.finding
    if as_json:
        answer: dict[str, object] = {"intact": finding is None, "events": outcome.events}
        if finding is not None:
            answer.update(position=finding.position, problem=finding.problem)
            answer["detail"] = finding.detail
        elif outcome.head is not None:
            answer.update(position=outcome.head.position, chain_hash=outcome.head.chain_hash)
        click.echo(json.dumps(answer))
    elif finding is None and outcome.head is not None:
        click.echo(
            f"intact: {outcome.events} events; head position {outcome.head.position}, "
            f"chain_hash {outcome.head.chain_hash}"
            + (f"; checkpoint at position {checkpoint.position} holds" if checkpoint else "")
        )
    elif finding is not None:
        click.echo(f"position {finding.position}: {finding.problem}: {finding.detail}", err=True)
    if finding is not None:
        raise SystemExit(1)


@audit_commands.command("checkpoint")
@click.option("--database-url", default=None)
def checkpoint(database_url: str | None) -> None:
    """Print the chain's head as {"position", "chain_hash", "at"}; keep it elsewhere."""
    click.echo(msgspec.json.encode(with_store(database_url, verifying.head)).decode())
