"""The task catalog: bundle validation, problem reporting and ref resolution."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from infrastructure.tasks import (
    FlagVerification,
    ScriptVerification,
    TaskCatalog,
    UnknownTask,
    load_catalog,
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
