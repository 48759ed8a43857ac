"""Dataset rows: their variables fill the task's templates (instruction and setup) and are
environment variables of the item's sandbox and task scripts; a row that lacks a variable its
task's templates use is refused at create, naming the row and the variable; the item shows its
variables."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from tests.app.conftest import Api
from tests.app.execution_fixtures import Start, write_bundle


def templated_task(root: Path) -> Path:
    """A task whose instruction and setup use {{ folder }}; its setup writes $WORD there, the
    oracle's solution copies it to answer.txt through $FOLDER, and the checker compares the
    answer with $WORD: it passes only if every phase got the row's variables."""
    folder = write_bundle(
        root,
        "needs-folder",
        instruction="The word is in {{ folder }}/word.txt; copy it to {{ folder }}/answer.txt.",
        setup="mkdir -p '{{ folder }}' && printf '%s' \"$WORD\" > '{{ folder }}/word.txt'\n",
        solution='cp "$FOLDER/word.txt" "$FOLDER/answer.txt"\n',
        checker='test -n "$WORD" && test "$(cat "$FOLDER/answer.txt")" = "$WORD"\n',
    )
    return folder


def service_task(root: Path) -> Path:
    """A dn-format task whose service answers with its own $WORD, whose provision refuses to
    run without $WORD, whose solution appends its own $WORD to the service's answer, and whose
    checker (where: agent) wants "$WORD:$WORD": it passes only if the row's variables reached
    the service, provision, the solution and the checker."""
    folder = root / "row-service"
    (folder / "web").mkdir(parents=True)
    (folder / "web" / "server.py").write_text(
        textwrap.dedent(
            """
            import os
            from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

            class Handler(BaseHTTPRequestHandler):
                def do_GET(self):
                    body = os.environ.get("WORD", "").encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
            """
        )
    )
    (folder / "task.yaml").write_text(
        textwrap.dedent(
            """
            name: row-service
            version: 1.0.0
            instruction: Ask {{web_url}} for the word and note it with {{ greeting }}.
            verification: {method: script, script: verify.sh, where: agent}
            ports: {web: [8080]}
            solution: {script: solution.sh}
            provision: {script: provision.sh}
            """
        )
    )
    (folder / "docker-compose.yaml").write_text(
        textwrap.dedent(
            """
            services:
              web:
                build: ./web
                ports: ["8080"]
                environment: {PORT: "8080"}
                x-assay: {command: python3 server.py}
            """
        )
    )
    (folder / "provision.sh").write_text(
        '#!/usr/bin/env bash\nset -eu\ntest -n "$WORD"\necho \'{"greeting": "hello"}\'\n'
    )
    (folder / "solution.sh").write_text(
        "#!/usr/bin/env bash\nset -eu\n"
        "answer=$(python3 -c 'import os, urllib.request; "
        'print(urllib.request.urlopen(os.environ["WEB_URL"], timeout=10).read().decode())\')\n'
        'printf \'%s:%s\' "$answer" "$WORD" > answer.txt\n'
    )
    (folder / "verify.sh").write_text(
        '#!/usr/bin/env bash\ntest -n "$WORD" && test "$(cat answer.txt)" = "$WORD:$WORD"\n'
    )
    return folder


@pytest.fixture
def bundles(tmp_path: Path) -> Path:
    """The shared `service` fixture's task folder, with this module's two tasks in it."""
    folder = tmp_path / "bundles"
    templated_task(folder)
    service_task(folder)
    return folder


@pytest.fixture
def api(service: Start) -> Api:
    return service(workers=0).api


def evaluation_count(api: Api) -> int:
    total: int = api.get("/evaluations").json()["total"]
    return total


def test_a_row_lacking_a_template_variable_is_refused_naming_row_and_variable(api: Api) -> None:
    rows = [
        {"task_name": "needs-folder", "folder": "a", "word": "x"},
        {"task_name": "needs-folder", "word": "y"},
    ]
    response = api.create(task_names=None, dataset={"rows": rows}, capability="oracle")

    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["loc"] == ["body", "dataset", "rows", 1]
    assert error["type"] == "missing_variable"
    assert "dataset row 1 lacks variable 'folder'" in error["msg"]
    assert evaluation_count(api) == 0  # a refused create appends nothing


def test_task_names_of_a_templated_task_need_the_variable_too(api: Api) -> None:
    refused = api.create(task_names=["needs-folder"], capability="oracle")
    assert refused.status_code == 422
    assert "task_names[0] lacks variable 'folder'" in refused.json()["errors"][0]["msg"]

    given = api.create(
        task_names=["needs-folder"], task_config={"folder": "f", "word": "w"}, capability="oracle"
    )
    assert given.status_code == 201, given.text


def test_a_variable_named_like_a_reserved_environment_variable_is_refused(api: Api) -> None:
    rows = [{"task_name": "needs-folder", "folder": "a", "path": "/evil"}]
    response = api.create(task_names=None, dataset=rows, capability="oracle")

    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["loc"] == ["body", "dataset", 0, "path"]
    assert "PATH" in error["msg"]


def test_rows_reach_setup_solution_and_checker_and_the_item_shows_them(service: Start) -> None:
    engine = service()
    rows = [
        {"task_name": "needs-folder", "folder": "alpha", "word": "apple"},
        {"task_name": "needs-folder", "folder": "beta/deeper", "word": "banana split"},
    ]
    created = engine.create(name="rows", capability="oracle", task_names=None, dataset=rows)

    done = engine.wait(created["id"], timeout=60)

    assert done["status"] == "completed", done["item_counts"]
    items = engine.items(created["id"])
    assert [i["status"] for i in items] == ["passed", "passed"]
    assert [i["variables"] for i in items] == [
        {"folder": "alpha", "word": "apple"},
        {"folder": "beta/deeper", "word": "banana split"},
    ]


def test_rows_reach_the_services_and_provision_of_a_dn_task(service: Start) -> None:
    engine = service()
    rows = [
        {"task_name": "row-service", "word": "quince"},
        {"task_name": "row-service", "word": "damson"},
    ]
    created = engine.create(name="svc", capability="oracle", task_names=None, dataset=rows)

    done = engine.wait(created["id"], timeout=90)

    items = engine.items(created["id"])
    assert done["status"] == "completed", [(i["status"], i["error"]) for i in items]
    assert [i["status"] for i in items] == ["passed", "passed"]


def test_a_dn_task_without_the_row_variable_fails_in_provision(service: Start) -> None:
    # {{ greeting }} comes from provision, so create cannot know it is missing; the row gives
    # no WORD, so provision fails and the item ends errored rather than running blind.
    engine = service()
    created = engine.create(
        name="svc-none",
        capability="oracle",
        task_names=None,
        dataset=[{"task_name": "row-service"}],
    )

    engine.wait(created["id"], timeout=90)

    [item] = engine.items(created["id"])
    assert item["status"] == "errored"
    assert "provision script failed" in item["error"]


def test_a_checker_sees_the_row_of_its_own_item(service: Start, bundles: Path) -> None:
    # The nop agent copies nothing: the checker must fail against the row's own word.
    engine = service()
    rows = [{"task_name": "needs-folder", "folder": "gamma", "word": "cherry"}]
    created = engine.create(name="nop", capability="nop", task_names=None, dataset=rows)

    assert engine.wait(created["id"], timeout=60)["status"] == "completed"
    [item] = engine.items(created["id"])
    assert item["status"] == "failed"


def test_the_create_schema_describes_every_field(api: Api) -> None:
    schema = api.client.get("/schema/openapi.json").json()
    request = schema["components"]["schemas"]["CreateEvaluationRequest"]
    undocumented = [
        name for name, spec in request["properties"].items() if not spec.get("description")
    ]
    assert undocumented == []
    assert yaml.safe_dump(request)  # plain data
