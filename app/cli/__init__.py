"""The `assay` command: one click group, one module per sub-command family."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="assay")
def main() -> None:
    """Assay: an event-sourced evaluation service for AI security agents."""


def _register() -> None:
    # Sub-command modules import heavy dependencies; they attach themselves to `main` here.
    from app.cli import admin, audit, db, log, projections, serve, tasks, worker

    for module in (admin, audit, db, log, projections, serve, tasks, worker):
        main.add_command(module.group)


_register()
