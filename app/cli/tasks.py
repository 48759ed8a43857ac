"""`assay tasks check DIR...`: validate task bundles before a server loads them."""

from __future__ import annotations

import click

from infrastructure.tasks import check_bundles


@click.group("tasks")
def task_commands() -> None:
    """Task bundles."""


@task_commands.command("check")
@click.argument("folders", nargs=-1, required=True, type=click.Path(file_okay=False))
def check(folders: tuple[str, ...]) -> None:
    """Validate each FOLDER (a bundle, or a folder of bundles) as the server would load it.

    Prints one line per problem (`PATH: reason`) and exits 1 when there is any, else prints
    one line per loaded task and exits 0.
    """
    tasks, problems = check_bundles(folders)
    for problem in problems:
        # YAML errors span lines; one problem, one line.
        click.echo(f"{problem.path}: {' '.join(problem.error.split())}")
    if problems:
        click.echo(f"{len(problems)} problem(s), {len(tasks)} bundle(s) valid", err=True)
        raise SystemExit(1)
    for task in tasks:
        click.echo(f"ok {task.ref} ({task.format} format) {task.bundle_dir}")
    if not tasks:
        click.echo("no task bundle found (a bundle is a folder with task.yaml)", err=True)
        raise SystemExit(1)
