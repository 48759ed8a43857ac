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

    for command in (
        admin.admin_commands,
        audit.audit_commands,
        db.db_commands,
        log.log_commands,
        projections.projection_commands,
        serve.serve_command,
        tasks.task_commands,
        worker.worker_command,
    ):
        main.add_command(command)


_register()
