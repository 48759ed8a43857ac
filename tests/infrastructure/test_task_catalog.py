"""The task catalog: bundle validation, problem reporting and ref resolution."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from infrastructure.sandbox.protocol import ServiceEndpoint, ServiceSpec
from infrastructure.tasks import (
    CheckerScriptVerification,
    FlagFileVerification,
    FlagVerification,
    ScriptVerification,
    TaskCatalog,
    TaskScript,
    TaskScriptOutputError,
    UnknownTask,
    load_catalog,
    parse_provision_output,
    version_key,
)

# Names no shipped task uses, so these tests do not depend on what `tasks/` contains.
GOOD_YAML = """
name: {name}
version: "{version}"
instruction: Find the flag on {{{{ host }}}}.
verification:
  type: flag
  flag: FLAG{{good}}
"""


def write_bundle(folder: Path, task_yaml: str, files: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "task.yaml").write_text(textwrap.dedent(task_yaml))
    for name, content in (files or {}).items():
        (folder / name).write_text(content)
    return folder


def good(folder: Path, name: str = "catalog-test", version: str = "1.0.0") -> Path:
    return write_bundle(folder, GOOD_YAML.format(name=name, version=version))


def problem_folders(catalog: TaskCatalog) -> list[str]:
    return [Path(problem.path).name for problem in catalog.problems]


@pytest.mark.parametrize(
    "ref",
    ["catalog-test", "catalog-test@1.0.0", "acme/catalog-test", "acme/catalog-test@1.0.0"],
)
def test_every_ref_form_resolves_to_the_task(tmp_path: Path, ref: str) -> None:
    good(tmp_path / "bundle")
    task = load_catalog([str(tmp_path)]).resolve(ref)
    assert task.ref == "catalog-test@1.0.0"
    assert task.bundle_dir == (tmp_path / "bundle").resolve()


def test_without_a_version_the_numerically_highest_version_wins(tmp_path: Path) -> None:
    for version in ["1.9.0", "1.10.0", "1.2"]:
        good(tmp_path / f"v{version}", version=version)
    catalog = load_catalog([str(tmp_path)])
    # As text, "1.9.0" > "1.10.0"; numerically 1.10 is the newer one.
    assert catalog.resolve("catalog-test").version == "1.10.0"
    assert catalog.resolve("acme/catalog-test").version == "1.10.0"
    assert catalog.resolve("catalog-test@1.9.0").version == "1.9.0"


def test_version_key_orders_numbers_numerically_and_text_below_numbers() -> None:
    versions = ["1.10", "1.2.beta", "1.2.0", "1.9", "0.9"]
    assert sorted(versions, key=version_key) == ["0.9", "1.2.beta", "1.2.0", "1.9", "1.10"]


@pytest.mark.parametrize(
    "ref",
    ["no-such-task", "catalog-test@9.9.9", "acme/no-such-task@1.0.0", "a/b/catalog-test", "", "@"],
)
def test_unknown_task_is_reported_by_ref(tmp_path: Path, ref: str) -> None:
    good(tmp_path / "bundle")
    catalog = load_catalog([str(tmp_path)])
    with pytest.raises(UnknownTask) as caught:
        catalog.resolve(ref)
    assert caught.value.ref == ref
    assert repr(ref) in str(caught.value)


BROKEN_BUNDLES = {
    "bad-yaml": "name: broken\ninstruction: [unclosed\n",
    "not-a-mapping": "- just\n- a list\n",
    "missing-name": "instruction: do it\nverification: {type: flag, flag: 'FLAG{x}'}\n",
    "unknown-field": "name: broken\ninstruction: do it\nflagg: FLAG{x}\n",
    "bad-name": "name: Broken Task\ninstruction: do it\n",
    "float-version": "name: broken\nversion: 1.10\ninstruction: do it\n",
    "unknown-verification-type": "name: broken\ninstruction: x\nverification: {type: vibes}\n",
    "blank-flag": "name: broken\ninstruction: x\nverification: {type: flag, flag: '  '}\n",
    "missing-checker": (
        "name: broken\ninstruction: x\nverification: {type: script, script: check.sh}\n"
    ),
    "solution-outside": "name: broken\ninstruction: x\nsolution: ../../etc/passwd\n",
    "zero-timeout": "name: broken\ninstruction: x\ntimeout_sec: 0\n",
}


@pytest.mark.parametrize("folder", sorted(BROKEN_BUNDLES))
def test_broken_bundle_is_reported_by_folder_and_the_good_ones_still_load(
    tmp_path: Path, folder: str
) -> None:
    good(tmp_path / "a-good-one", name="good-before")
    write_bundle(tmp_path / folder, BROKEN_BUNDLES[folder])
    good(tmp_path / "z-good-one", name="good-after")

    catalog = load_catalog([str(tmp_path)])

    assert problem_folders(catalog) == [folder]
    assert catalog.problems[0].error
    assert catalog.resolve("good-before").name == "good-before"
    assert catalog.resolve("good-after").name == "good-after"
    with pytest.raises(UnknownTask):
        catalog.resolve("broken")


@pytest.mark.parametrize(
    ("folder", "words"),
    [
        ("unknown-field", ["flagg"]),
        ("missing-name", ["name"]),
        ("float-version", ["version"]),
        ("bad-yaml", ["YAML"]),
        ("missing-checker", ["check.sh", "not found"]),
        ("solution-outside", ["outside the bundle"]),
        ("unknown-verification-type", ["vibes"]),
    ],
)
def test_problem_reason_names_what_is_wrong(tmp_path: Path, folder: str, words: list[str]) -> None:
    write_bundle(tmp_path / folder, BROKEN_BUNDLES[folder])
    (problem,) = load_catalog([str(tmp_path)]).problems
    for word in words:
        assert word in problem.error


def test_extra_path_may_itself_be_a_bundle(tmp_path: Path) -> None:
    bundle = good(tmp_path / "standalone", name="standalone")
    catalog = load_catalog([str(bundle)])
    assert catalog.resolve("standalone").bundle_dir == bundle.resolve()
    assert catalog.problems == []


def test_every_extra_path_is_loaded_and_without_them_the_tasks_are_absent(tmp_path: Path) -> None:
    good(tmp_path / "one" / "bundle", name="from-one")
    good(tmp_path / "two" / "bundle", name="from-two")
    catalog = load_catalog([str(tmp_path / "one"), tmp_path / "two"])
    assert {"from-one", "from-two"} <= set(catalog.names())
    assert not {"from-one", "from-two"} & set(load_catalog().names())


def test_missing_extra_path_is_a_problem(tmp_path: Path) -> None:
    catalog = load_catalog([str(tmp_path / "nowhere")])
    assert problem_folders(catalog) == ["nowhere"]


def test_a_single_path_string_is_refused_rather_than_read_letter_by_letter(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        load_catalog(str(tmp_path))


def test_duplicate_name_and_version_keeps_the_first_and_reports_the_second(tmp_path: Path) -> None:
    first = good(tmp_path / "first" / "bundle")
    good(tmp_path / "second" / "bundle")
    catalog = load_catalog([str(tmp_path / "first"), str(tmp_path / "second")])
    assert catalog.resolve("catalog-test").bundle_dir == first.resolve()
    assert [Path(p.path).parent.name for p in catalog.problems] == ["second"]
    assert "catalog-test@1.0.0" in catalog.problems[0].error


def test_task_without_verification_loads_but_has_no_verification(tmp_path: Path) -> None:
    write_bundle(tmp_path / "bundle", "name: unverified\ninstruction: just try\n")
    catalog = load_catalog([str(tmp_path)])
    task = catalog.resolve("unverified")
    assert catalog.problems == []
    assert task.verification is None
    assert task.has_verification is False
    assert task.checker_path is None


def test_omitted_fields_take_their_defaults(tmp_path: Path) -> None:
    write_bundle(tmp_path / "bundle", "name: minimal\ninstruction: x\n")
    task = load_catalog([str(tmp_path)]).resolve("minimal")
    assert task.version == "1.0.0"
    assert task.description == ""
    assert task.setup is None
    assert task.network is False
    assert task.timeout_sec is None
    assert task.tags == ()
    assert task.solution_path is None


def test_solution_defaults_to_solution_sh_when_the_bundle_has_one(tmp_path: Path) -> None:
    write_bundle(tmp_path / "bundle", "name: solved\ninstruction: x\n", {"solution.sh": "true\n"})
    task = load_catalog([str(tmp_path)]).resolve("solved")
    assert task.solution_path == (tmp_path / "bundle" / "solution.sh").resolve()


def test_explicit_solution_path_is_used(tmp_path: Path) -> None:
    yaml_text = "name: solved\ninstruction: x\nsolution: ref/solve.sh\n"
    bundle = write_bundle(tmp_path / "bundle", yaml_text)
    (bundle / "ref").mkdir()
    (bundle / "ref" / "solve.sh").write_text("true\n")
    task = load_catalog([str(tmp_path)]).resolve("solved")
    assert task.solution_path == bundle.resolve() / "ref" / "solve.sh"


def test_full_bundle_exposes_every_field(tmp_path: Path) -> None:
    yaml_text = """
    name: full_task-2
    version: "2.1.0"
    description: all of it
    instruction: go
    setup: echo ready
    verification: {type: script, script: check.sh}
    network: true
    timeout_sec: 60
    tags: [web, easy]
    """
    write_bundle(tmp_path / "bundle", yaml_text, {"check.sh": "exit 0\n"})
    task = load_catalog([str(tmp_path)]).resolve("full_task-2")
    assert task.ref == "full_task-2@2.1.0"
    assert task.description == "all of it"
    assert task.setup == "echo ready"
    assert task.verification == ScriptVerification(script="check.sh")
    assert task.checker_path == (tmp_path / "bundle" / "check.sh").resolve()
    assert task.network is True
    assert task.egress_allow == ("*",)
    assert task.timeout_sec == 60
    assert task.tags == ("web", "easy")


def test_names_lists_each_task_once_however_many_versions(tmp_path: Path) -> None:
    good(tmp_path / "v1", version="1.0.0")
    good(tmp_path / "v2", version="2.0.0")
    catalog = load_catalog([str(tmp_path)])
    assert catalog.names().count("catalog-test") == 1
    assert catalog.names() == sorted(catalog.names())
    versions = [t.version for t in catalog.tasks() if t.name == "catalog-test"]
    assert versions == ["1.0.0", "2.0.0"]


def test_render_instruction_fills_known_variables_and_leaves_unknown_ones(tmp_path: Path) -> None:
    yaml_text = (
        'name: tpl\ninstruction: "Attack {{ host }}:{{port}} as {{ user }}; {{ missing }}."\n'
    )
    write_bundle(tmp_path / "bundle", yaml_text)
    task = load_catalog([str(tmp_path)]).resolve("tpl")
    rendered = task.render_instruction({"host": "10.0.0.5", "port": 8080, "user": None})
    assert rendered == "Attack 10.0.0.5:8080 as ; {{ missing }}."


def test_render_instruction_does_not_expand_placeholders_inside_values(tmp_path: Path) -> None:
    write_bundle(tmp_path / "bundle", 'name: tpl\ninstruction: "{{ a }} {{ b }}"\n')
    task = load_catalog([str(tmp_path)]).resolve("tpl")
    assert task.render_instruction({"a": "{{ b }}", "b": "B"}) == "{{ b }} B"


@pytest.mark.parametrize(
    ("submitted", "passes"),
    [
        ("FLAG{x}", True),
        ("  FLAG{x}\n", True),
        ("FLAG{X}", False),
        ("", False),
        ("FLAG{x}!", False),
    ],
)
def test_flag_verification_compares_exactly_after_strip(submitted: str, passes: bool) -> None:
    assert FlagVerification(flag="FLAG{x}").matches(submitted) is passes


def test_an_assay_format_network_task_may_reach_anywhere(tmp_path: Path) -> None:
    write_bundle(tmp_path / "open", "name: open\ninstruction: x\nnetwork: true\n")
    write_bundle(tmp_path / "closed", "name: closed\ninstruction: x\n")
    catalog = load_catalog([str(tmp_path)])
    assert catalog.resolve("open").egress_allow == ("*",)
    assert catalog.resolve("closed").egress_allow is None
    assert catalog.resolve("open").format == "assay"


def test_assay_format_agent_tree_hides_task_yaml_the_solution_and_the_checker(
    tmp_path: Path,
) -> None:
    yaml_text = "name: tree\ninstruction: x\nverification: {type: script, script: checks/run.sh}\n"
    bundle = write_bundle(tmp_path / "bundle", yaml_text, {"data.txt": "d", "solution.sh": "s"})
    (bundle / "checks").mkdir()
    (bundle / "checks" / "run.sh").write_text("exit 0\n")
    tree = load_catalog([str(tmp_path)]).resolve("tree").agent_tree()
    assert tree.source == bundle.resolve()
    assert tree.exclude == {"task.yaml", "solution.sh", "checks"}
    assert [path.name for path in tree.files()] == ["data.txt"]


def test_a_link_in_the_agents_files_is_refused(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "linked", GOOD_YAML.format(name="linked", version="1.0.0"))
    (bundle / "passwd").symlink_to("/etc/passwd")
    (problem,) = load_catalog([str(tmp_path)]).problems
    assert "passwd" in problem.error and "symbolic link" in problem.error


# ---- the dn format (task.yaml + docker-compose.yaml, as `dn task init` writes it) ----

DN_TASK = """
name: web-task
version: 1.2.0
description: A web task.
instruction: |
  Attack {{web_url}} ({{web_host}}:{{web_port}}, admin on {{web_url_9090}}) as {{user}};
  the lab is {{lab_url}}. Write the flag to /tmp/result.txt.
verification:
  method: flag
  path: /tmp/result.txt
  value: "FLAG{dn}"
ports:
  web: [8080, 9090]
provision:
  script: provision.sh
teardown:
  script: teardown.sh
  timeout: 30
solution:
  script: solution.sh
egress:
  allow: [PyPI.org, "*.example.com", 10.0.0.0/8, 192.0.2.1]
tags: [web, 2024]
difficulty: hard
source: my-suite
author: {name: Alice, email: alice@example.com}
license: MIT
repository: https://example.com/repo
max_agent_timeout_sec: 600
"""

DN_COMPOSE = """
services:
  web:
    build: ./web
    image: example/web:1
    ports: ["9090", "127.0.0.1:18080:8080/tcp", {target: 7000}]
    environment: [MODE=lab, "EMPTY="]
    healthcheck: {test: ["CMD", "true"]}
    x-assay: {command: python3 server.py}
  db:
    image: postgres:16
    environment: {POSTGRES_PASSWORD: secret, DEBUG: true, PORT: 5432}
x-notes: compose's own extension fields are for humans
"""


def write_dn_bundle(
    folder: Path,
    task_yaml: str = DN_TASK,
    compose: str | None = DN_COMPOSE,
    files: dict[str, str] | None = None,
) -> Path:
    defaults = {
        "provision.sh": "echo '{}'\n",
        "teardown.sh": "exit 0\n",
        "solution.sh": "echo FLAG{dn} > /tmp/result.txt\n",
        "verify.sh": "exit 0\n",
        "web/server.py": "print('serving')\n",
        "web/secret.txt": "FLAG{dn}\n",
    }
    folder.mkdir(parents=True)
    (folder / "task.yaml").write_text(textwrap.dedent(task_yaml))
    if compose is not None:
        (folder / "docker-compose.yaml").write_text(textwrap.dedent(compose))
    for name, content in (defaults | (files or {})).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(content)
    return folder


def test_a_dn_bundle_exposes_every_field(tmp_path: Path) -> None:
    bundle = write_dn_bundle(tmp_path / "bundle").resolve()
    catalog = load_catalog([str(tmp_path)])
    assert catalog.problems == []
    task = catalog.resolve("web-task")
    assert (task.format, task.ref, task.description) == (
        "dreadnode",
        "web-task@1.2.0",
        "A web task.",
    )
    assert task.verification == FlagFileVerification(path="/tmp/result.txt", value="FLAG{dn}")
    assert task.ports == {"web": (8080, 9090)}
    web, db = task.services
    # task.yaml's ports first (8080 is {{web_port}}), then the rest of compose's.
    assert web == ServiceSpec(
        name="web",
        context=str(bundle / "web"),
        command="python3 server.py",
        image="example/web:1",
        ports=(8080, 9090, 7000),
        environment={"MODE": "lab", "EMPTY": ""},
    )
    assert db == ServiceSpec(
        name="db",
        image="postgres:16",
        environment={"POSTGRES_PASSWORD": "secret", "DEBUG": "true", "PORT": "5432"},
    )
    assert task.provision == TaskScript(script="provision.sh", timeout=120)
    assert task.teardown == TaskScript(script="teardown.sh", timeout=30)
    assert task.provision_path == bundle / "provision.sh"
    assert task.teardown_path == bundle / "teardown.sh"
    assert task.solution == "solution.sh" and task.solution_path == bundle / "solution.sh"
    assert task.egress_allow == ("pypi.org", "*.example.com", "10.0.0.0/8", "192.0.2.1")
    assert task.network is False
    assert task.tags == ("web", "2024")
    assert (task.difficulty, task.source, task.author) == ("hard", "my-suite", "Alice")
    assert (task.license, task.repository) == ("MIT", "https://example.com/repo")
    assert task.timeout_sec == 600
    assert task.setup is None and task.checker_path is None
    # Nothing of a dn bundle reaches the agent unless it has a workspace/ folder.
    assert task.agent_tree().source is None
    assert list(task.agent_tree().files()) == []
    assert task.service_problems("local") == (
        "service 'db' has no x-assay.command, so the local provider cannot run it",
    )
    assert task.service_problems("docker") == ()


def test_a_dn_bundle_without_egress_has_no_policy_and_an_empty_list_allows_nothing(
    tmp_path: Path,
) -> None:
    without = DN_TASK.replace(
        'egress:\n  allow: [PyPI.org, "*.example.com", 10.0.0.0/8, 192.0.2.1]\n', ""
    )
    write_dn_bundle(tmp_path / "a", without.replace("web-task", "no-egress"))
    write_dn_bundle(
        tmp_path / "b", without.replace("web-task", "empty-egress") + "egress: {allow: []}\n"
    )
    catalog = load_catalog([str(tmp_path)])
    assert catalog.problems == []
    assert catalog.resolve("no-egress").egress_allow is None
    assert catalog.resolve("empty-egress").egress_allow == ()


def test_a_dn_bundle_gives_the_agent_its_workspace_folder_only(tmp_path: Path) -> None:
    bundle = write_dn_bundle(
        tmp_path / "bundle", files={"workspace/notes.txt": "n", "workspace/src/app.py": "a"}
    ).resolve()
    task = load_catalog([str(tmp_path)]).resolve("web-task")
    tree = task.agent_tree()
    assert tree.source == bundle / "workspace" and tree.exclude == frozenset()
    assert sorted(p.relative_to(bundle).as_posix() for p in tree.files()) == [
        "workspace/notes.txt",
        "workspace/src/app.py",
    ]


SCRIPT_VERIFICATION = """
name: scripted
version: 1.0.0
instruction: Fix it.
verification:
  method: script
  script: verify.sh
{extra}
"""


@pytest.mark.parametrize(
    ("extra", "compose", "expected"),
    [
        # The client's default is environment; with one service it runs in that service.
        (
            "",
            "services: {app: {image: x}}",
            CheckerScriptVerification(script="verify.sh", service="app"),
        ),
        (
            "  where: agent\n  timeout: 5",
            "services: {app: {image: x}}",
            CheckerScriptVerification(script="verify.sh", where="agent", timeout=5),
        ),
        (
            "  x-assay-service: b",
            "services: {a: {image: x}, b: {image: y}}",
            CheckerScriptVerification(script="verify.sh", service="b"),
        ),
        # No services: a fresh checker principal on the item's network.
        ("  where: environment", None, CheckerScriptVerification(script="verify.sh")),
    ],
)
def test_dn_script_verification(
    tmp_path: Path, extra: str, compose: str | None, expected: CheckerScriptVerification
) -> None:
    write_dn_bundle(tmp_path / "bundle", SCRIPT_VERIFICATION.format(extra=extra), compose)
    catalog = load_catalog([str(tmp_path)])
    assert catalog.problems == []
    task = catalog.resolve("scripted")
    assert task.verification == expected
    assert task.checker_path == (tmp_path / "bundle" / "verify.sh").resolve()


def test_a_dn_script_without_method_is_inferred_as_the_client_does(tmp_path: Path) -> None:
    text = (
        "name: inferred\nversion: 1.0.0\ninstruction: x\n"
        "verification: {script: verify.sh, where: agent}\n"
    )
    write_dn_bundle(tmp_path / "bundle", text, None)
    task = load_catalog([str(tmp_path)]).resolve("inferred")
    assert task.format == "dreadnode"
    assert task.verification == CheckerScriptVerification(script="verify.sh", where="agent")


# Each bad dn bundle: (task.yaml edit, compose text or None for the default, extra files, words
# the reason must contain). The edit is (old, new) applied to DN_TASK.
BAD_DN_BUNDLES: dict[str, tuple[tuple[str, str], str | None, dict[str, str], list[str]]] = {
    "unknown-method": (
        ("method: flag", "method: vibes"),
        None,
        {},
        ["verification.method", "vibes"],
    ),
    "judge-method": (
        ("method: flag", "method: outcome_judge"),
        None,
        {},
        ["outcome_judge", "judge"],
    ),
    "missing-method": (("  method: flag\n", ""), None, {}, ["verification.method"]),
    "bad-hash-length": (
        ('value: "FLAG{dn}"', "hash: sha256:abc123"),
        None,
        {},
        ["verification.hash", "64"],
    ),
    "bad-hash-hex": (
        ('value: "FLAG{dn}"', "hash: sha256:" + "z" * 64),
        None,
        {},
        ["verification.hash", "hex"],
    ),
    "bad-hash-algorithm": (
        ('value: "FLAG{dn}"', "hash: crc32:abcd"),
        None,
        {},
        ["verification.hash", "crc32"],
    ),
    "hash-and-value": (
        ('value: "FLAG{dn}"', 'value: "FLAG{dn}"\n  hash: ' + "a" * 64),
        None,
        {},
        ["verification.hash", "verification.value"],
    ),
    "no-value-nor-hash": (('  value: "FLAG{dn}"\n', ""), None, {}, ["verification.value"]),
    "blank-value": (('value: "FLAG{dn}"', 'value: "  "'), None, {}, ["verification.value"]),
    "no-path": (("  path: /tmp/result.txt\n", ""), None, {}, ["verification.path"]),
    "path-elsewhere": (
        ("path: /tmp/result.txt", "path: /etc/flag"),
        None,
        {},
        ["verification.path", "/etc/flag"],
    ),
    "path-climbs": (
        ("path: /tmp/result.txt", "path: ../result.txt"),
        None,
        {},
        ["verification.path", ".."],
    ),
    "where-on-flag": (
        ("  path: /tmp", "  where: agent\n  path: /tmp"),
        None,
        {},
        ["verification.where"],
    ),
    "unknown-verification-key": (
        ("  path: /tmp", "  paht: x\n  path: /tmp"),
        None,
        {},
        ["verification.paht"],
    ),
    "ports-without-compose": (("", ""), "", {}, ["docker-compose.yaml", "ports"]),
    "ports-unknown-service": (("web: [8080, 9090]", "api: [8080]"), None, {}, ["ports", "api"]),
    "ports-not-exposed": (("web: [8080, 9090]", "web: [8081]"), None, {}, ["ports.web", "8081"]),
    "context-outside": (
        (("", "")),
        "services: {web: {build: ../../outside}}",
        {},
        ["outside the bundle", "build context"],
    ),
    "context-missing": (
        (("", "")),
        "services: {web: {build: ./nowhere}}",
        {},
        ["nowhere", "not a folder"],
    ),
    "no-image-nor-build": (
        (("", "")),
        "services: {web: {ports: ['8080', '9090']}}",
        {},
        ["web", "image or a build"],
    ),
    "command-without-build": (
        ("", ""),
        "services: {web: {image: x, x-assay: {command: run}}}",
        {},
        ["x-assay.command", "build"],
    ),
    "unknown-extension-key": (
        ("", ""),
        "services: {web: {build: ./web, x-assay: {user: root}}}",
        {},
        ["x-assay.user"],
    ),
    "unsupported-service-key": (
        ("", ""),
        "services: {web: {image: x, volumes: ['/:/host']}}",
        {},
        ["volumes"],
    ),
    "unsupported-top-level": (
        ("", ""),
        "services: {web: {image: x}}\nnetworks: {n: {}}",
        {},
        ["networks"],
    ),
    "env-from-host": (
        ("", ""),
        "services: {web: {image: x, environment: [TOKEN]}}",
        {},
        ["TOKEN", "environment"],
    ),
    "bad-service-name": (("", ""), "services: {Web_1: {image: x}}", {}, ["Web_1", "DNS label"]),
    "bad-compose-port": (
        ("", ""),
        "services: {web: {image: x, ports: [http]}}",
        {},
        ["http", "port"],
    ),
    "compose-not-mapping": (("", ""), "- web\n", {}, ["docker-compose.yaml", "services"]),
    "missing-provision": (
        ("script: provision.sh", "script: nope.sh"),
        None,
        {},
        ["provision.script", "nope.sh"],
    ),
    "missing-teardown": (
        ("script: teardown.sh", "script: nope.sh"),
        None,
        {},
        ["teardown.script", "nope.sh"],
    ),
    "zero-teardown-timeout": (("timeout: 30", "timeout: 0"), None, {}, ["teardown.timeout"]),
    "missing-solution": (
        ("script: solution.sh", "script: nope.sh"),
        None,
        {},
        ["solution.script", "nope.sh"],
    ),
    "unknown-key": (("difficulty: hard", "dificulty: hard"), None, {}, ["dificulty"]),
    "models": (("difficulty: hard", "models: [openai/gpt-4o]"), None, {}, ["models", "inference"]),
    "egress-star": (("10.0.0.0/8, 192.0.2.1]", "'*']"), None, {}, ["egress.allow", "*"]),
    "egress-url": (
        ("10.0.0.0/8, 192.0.2.1]", "'https://example.com/x']"),
        None,
        {},
        ["egress.allow", "https://example.com/x"],
    ),
    "egress-tcp": (
        ("10.0.0.0/8, 192.0.2.1]", "'tcp://db.example.com:5432']"),
        None,
        {},
        ["egress.allow", "per-port"],
    ),
    "egress-bad-cidr": (
        ("10.0.0.0/8, 192.0.2.1]", "10.0.0.1/8]"),
        None,
        {},
        ["egress.allow", "CIDR"],
    ),
    "egress-list": (("egress:\n  allow: [", "egress: ["), None, {}, ["egress"]),
    "solution-in-workspace": (
        ("script: solution.sh", "script: workspace/solution.sh"),
        None,
        {"workspace/solution.sh": "s"},
        ["solution", "workspace/"],
    ),
    "context-in-workspace": (
        ("", ""),
        "services: {web: {build: ./workspace/web, ports: ['8080', '9090']}}",
        {"workspace/web/app.py": "a"},
        ["build context", "workspace/"],
    ),
    "version-float": (("version: 1.2.0", "version: 1.2"), None, {}, ["version"]),
}


@pytest.mark.parametrize("case", sorted(BAD_DN_BUNDLES))
def test_a_bad_dn_bundle_is_refused_with_a_reason_naming_the_field(
    tmp_path: Path, case: str
) -> None:
    (old, new), compose, files, words = BAD_DN_BUNDLES[case]
    assert old in DN_TASK, f"{case}: the edit does not apply"
    task_yaml = DN_TASK.replace(old, new, 1)
    # "" means no compose file at all, None the default one.
    compose_text = None if compose == "" else DN_COMPOSE if compose is None else compose
    write_dn_bundle(tmp_path / case, task_yaml, compose_text, files)
    good(tmp_path / "z-good-one", name="good-after")
    catalog = load_catalog([str(tmp_path)])
    assert problem_folders(catalog) == [case]
    for word in words:
        assert word in catalog.problems[0].error, catalog.problems[0].error
    assert catalog.resolve("good-after").name == "good-after"


def test_an_environment_script_must_name_its_service_when_there_are_several(tmp_path: Path) -> None:
    compose = "services: {a: {image: x}, b: {image: y}}"
    write_dn_bundle(tmp_path / "several", SCRIPT_VERIFICATION.format(extra=""), compose)
    write_dn_bundle(
        tmp_path / "unknown", SCRIPT_VERIFICATION.format(extra="  x-assay-service: c"), compose
    )
    write_dn_bundle(
        tmp_path / "agent",
        SCRIPT_VERIFICATION.format(extra="  where: agent\n  x-assay-service: a"),
        compose,
    )
    write_dn_bundle(tmp_path / "where", SCRIPT_VERIFICATION.format(extra="  where: host"), compose)
    write_dn_bundle(
        tmp_path / "missing",
        SCRIPT_VERIFICATION.format(extra="").replace("verify.sh", "nope.sh"),
        compose,
    )
    errors = {Path(p.path).name: p.error for p in load_catalog([str(tmp_path)]).problems}
    assert "verification.x-assay-service is required" in errors["several"]
    assert "'c' is not a compose service" in errors["unknown"]
    assert "where: environment" in errors["agent"]
    assert "verification.where 'host'" in errors["where"]
    assert "verification.script 'nope.sh' not found" in errors["missing"]


def test_a_link_in_a_dn_workspace_is_refused(tmp_path: Path) -> None:
    bundle = write_dn_bundle(tmp_path / "bundle", files={"workspace/a.txt": "a"})
    (bundle / "workspace" / "secret").symlink_to(bundle / "web" / "secret.txt")
    (problem,) = load_catalog([str(tmp_path)]).problems
    assert "secret" in problem.error and "symbolic link" in problem.error


# ---- verification and rendering ----

FLAG_SHA256 = hashlib.sha256(b"FLAG{x}").hexdigest()


@pytest.mark.parametrize(
    ("verification", "content", "passes"),
    [
        (FlagFileVerification(path="r", value="FLAG{x}"), b"FLAG{x}", True),
        (FlagFileVerification(path="r", value="FLAG{x}"), b"  FLAG{x}\n", True),
        (FlagFileVerification(path="r", value="FLAG{x}"), b"FLAG{X}", False),
        (FlagFileVerification(path="r", value="FLAG{x}"), b"", False),
        (FlagFileVerification(path="r", value="FLAG{x}"), b"\xff\xfe", False),
        (FlagFileVerification(path="r", hash=f"sha256:{FLAG_SHA256}"), b"FLAG{x}\n", True),
        (FlagFileVerification(path="r", hash=f"sha256:{FLAG_SHA256}"), b"FLAG{y}", False),
        (
            FlagFileVerification(path="r", hash="md5:" + hashlib.md5(b"FLAG{x}").hexdigest()),
            b"FLAG{x}",
            True,
        ),
    ],
)
def test_flag_file_verification_compares_the_stripped_file(
    verification: FlagFileVerification, content: bytes, passes: bool
) -> None:
    assert verification.matches(content) is passes


@pytest.mark.parametrize(
    "written",
    [f"sha256:{FLAG_SHA256.upper()}", FLAG_SHA256, f"SHA256:{FLAG_SHA256}"],
)
def test_a_hash_is_normalised_as_the_client_reads_it(tmp_path: Path, written: str) -> None:
    task_yaml = DN_TASK.replace('value: "FLAG{dn}"', f'hash: "{written}"')
    write_dn_bundle(tmp_path / "bundle", task_yaml)
    task = load_catalog([str(tmp_path)]).resolve("web-task")
    assert isinstance(task.verification, FlagFileVerification)
    assert task.verification.hash == f"sha256:{FLAG_SHA256}"
    assert task.verification.matches(b"FLAG{x}")


def test_render_instruction_fills_service_endpoints_over_variables(tmp_path: Path) -> None:
    write_dn_bundle(tmp_path / "bundle")
    task = load_catalog([str(tmp_path)]).resolve("web-task")
    endpoints = {"web": ServiceEndpoint(name="web", host="web", port=8080)}
    # A dataset column named like a service variable does not point the agent elsewhere.
    variables = {"user": "alice", "lab_url": "http://lab.example", "web_url": "http://evil"}
    assert task.render_instruction(variables, endpoints) == (
        "Attack http://web:8080 (web:8080, admin on http://web:9090) as alice;\n"
        "the lab is http://lab.example. Write the flag to /tmp/result.txt.\n"
    )
    # Without endpoints the service placeholders stay as written.
    assert "{{web_host}}:{{web_port}}" in task.render_instruction(variables)


def test_service_variables_follow_the_endpoint_when_the_provider_moved_the_port(
    tmp_path: Path,
) -> None:
    write_dn_bundle(tmp_path / "bundle")
    task = load_catalog([str(tmp_path)]).resolve("web-task")
    moved = {"web": ServiceEndpoint(name="web", host="127.0.0.1", port=41000)}
    assert task.service_variables(moved) == {
        "web_url": "http://127.0.0.1:41000",
        "web_host": "127.0.0.1",
        "web_port": "41000",
        "web_url_41000": "http://127.0.0.1:41000",
    }
    same = {"web": ServiceEndpoint(name="web", host="web", port=8080)}
    assert task.service_environment(same) == {
        "WEB_URL": "http://web:8080",
        "WEB_HOST": "web",
        "WEB_PORT": "8080",
        "WEB_URL_8080": "http://web:8080",
        "WEB_URL_9090": "http://web:9090",
    }


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        ('{"lab_url": "http://lab", "attempt": 3}\n', {"lab_url": "http://lab", "attempt": "3"}),
        ("", {}),
        ("  \n", {}),
    ],
)
def test_provision_output_becomes_template_variables(stdout: str, expected: dict[str, str]) -> None:
    assert parse_provision_output(stdout) == expected


@pytest.mark.parametrize(
    ("stdout", "words"), [("not json", "not valid JSON"), ("[1, 2]", "JSON object")]
)
def test_provision_output_that_is_no_json_object_is_refused(stdout: str, words: str) -> None:
    with pytest.raises(TaskScriptOutputError) as caught:
        parse_provision_output(stdout)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"value": "FLAG{x}", "hash": f"sha256:{FLAG_SHA256}"},
        {"hash": "sha256:abc"},
        {"hash": f"sha256:{FLAG_SHA256.upper()}"},
        {"hash": f"crc32:{FLAG_SHA256}"},
    ],
)
def test_a_flag_file_check_is_refused_unless_exactly_one_normalised_answer(
    fields: dict[str, str],
) -> None:
    with pytest.raises(ValueError):
        FlagFileVerification(path="/tmp/result.txt", **fields)
