"""The agents: oracle, nop and the OpenAI-compatible tool-calling agent.

They run against `TmpSandbox`, a small stand-in for a sandbox provider that runs real bash in a
temporary directory (the agents only depend on the Sandbox protocol), and the openai agent talks
over real HTTP to the scripted server in `scripted_openai.py`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import msgspec
import pytest

from infrastructure.agents.nop import NopAgent
from infrastructure.agents.openai import TOOLS, OpenAIAgent
from infrastructure.agents.oracle import OracleAgent
from infrastructure.agents.protocol import (
    Agent,
    AgentContext,
    AgentInfraError,
)
from infrastructure.agents.registry import agent_names, create_agent
from infrastructure.sandbox.protocol import ExecResult, Sandbox
from infrastructure.tasks import (
    FlagFileVerification,
    FlagVerification,
    Task,
    load_bundle,
    load_catalog,
)
from tests.infrastructure.scripted_openai import (
    Reply,
    ScriptedOpenAI,
    completion,
    error,
    tool_call,
)

SHIPPED = {task.name: task for task in load_catalog().tasks()}
MODEL = "scripted-model-1"
API_KEY = "sk-test-0123456789abcdef"


class TmpSandbox:
    """The Sandbox protocol over a temporary directory: real bash, its own process group per
    command (killed as a whole at the deadline), no isolation. Records the commands it ran."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.commands: list[str] = []

    @property
    def id(self) -> str:
        return f"tmp-{self.root.name}"

    @property
    def location(self) -> str:
        return str(self.root)

    async def run(
        self,
        command: str,
        *,
        timeout_sec: float,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> ExecResult:
        self.commands.append(command)
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            command,
            cwd=self.root,
            env={**os.environ, **env} if env else None,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        data = None if stdin is None else stdin.encode()
        try:
            out, err = await asyncio.wait_for(proc.communicate(data), timeout_sec)
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return ExecResult(
                exit_code=None,
                stdout="",
                stderr="",
                timed_out=True,
                duration_ms=(time.monotonic() - started) * 1000,
            )
        return ExecResult(
            exit_code=proc.returncode,
            stdout=out.decode(errors="replace"),
            stderr=err.decode(errors="replace"),
            timed_out=False,
            duration_ms=(time.monotonic() - started) * 1000,
        )

    async def put_file(self, relative_path: str, content: bytes, mode: int = 0o644) -> None:
        path = self.root / relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)

    async def put_tree(self, source: Path, exclude: frozenset[str] = frozenset()) -> None:
        shutil.copytree(
            source,
            self.root,
            dirs_exist_ok=True,
            ignore=lambda _dir, names: [n for n in names if n in exclude],
        )

    async def get_file(self, relative_path: str) -> bytes:
        return (self.root / relative_path).read_bytes()

    async def kill_all(self) -> None:
        pass

    async def destroy(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


async def prepared_sandbox(task: Task, tmp_path: Path) -> TmpSandbox:
    """A sandbox holding the bundle as the runner leaves it for the agent: everything but the
    reference solution and the checker."""
    sandbox = TmpSandbox(tmp_path / "sandbox")
    tree = task.agent_tree()
    if tree.source is not None:
        await sandbox.put_tree(tree.source, exclude=tree.exclude)
    if task.setup is not None:
        result = await sandbox.run(task.setup, timeout_sec=30)
        assert result.exit_code == 0, result.stderr
    return sandbox


def context_for(task: Task, **overrides: object) -> AgentContext:
    fields: dict[str, object] = {
        "task": task,
        "instruction": task.render_instruction({}),
        "model": MODEL,
        "max_steps": 10,
        "timeout_sec": 30.0,
        "api_key": API_KEY,
    }
    return AgentContext(**(fields | overrides))  # type: ignore[arg-type]


def flag_of(task: Task) -> str:
    if isinstance(task.verification, FlagFileVerification):
        assert task.verification.value is not None
        return task.verification.value
    assert isinstance(task.verification, FlagVerification)
    return task.verification.flag


def write_bundle(folder: Path, task_yaml: str, files: Mapping[str, str]) -> Task:
    folder.mkdir(parents=True)
    (folder / "task.yaml").write_text(task_yaml)
    for name, text in files.items():
        (folder / name).write_text(text)
    return load_bundle(folder)


def fast_openai() -> OpenAIAgent:
    # No sleeping between retries: the tests assert how many attempts were made, not how long.
    return OpenAIAgent(max_retries=2, retry_delay_sec=0.0)


@pytest.fixture
def server() -> Iterator[ScriptedOpenAI]:
    with ScriptedOpenAI() as scripted:
        yield scripted


def shell(command: str) -> Reply:
    return completion(tool_calls=[tool_call("shell", {"command": command})])


def submit(answer: str) -> Reply:
    return completion(tool_calls=[tool_call("submit", {"answer": answer})])


# --- registry -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", agent_names())
def test_every_registered_agent_name_creates_an_agent_of_that_name(name: str) -> None:
    agent: Agent = create_agent(name)
    assert agent.name == name


def test_create_agent_refuses_an_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown agent 'claude'"):
        create_agent("claude")


def test_fakes_satisfy_the_protocols() -> None:
    # Static check (mypy) that the stand-in is a Sandbox and the agents are Agents.
    sandbox: Sandbox = TmpSandbox(Path("/nonexistent"))
    agents: list[Agent] = [OracleAgent(), NopAgent(), OpenAIAgent()]
    assert sandbox.id and len(agents) == 3


# --- oracle -------------------------------------------------------------------------------


@pytest.mark.parametrize("task_name", ["decode-payload", "crack-weak-hash"])
async def test_oracle_submits_the_flag_of_a_shipped_flag_task(
    task_name: str, tmp_path: Path
) -> None:
    task = SHIPPED[task_name]
    sandbox = await prepared_sandbox(task, tmp_path)
    assert not (sandbox.root / "solution.sh").exists()

    outcome = await OracleAgent().run(sandbox, context_for(task, model=None, api_key=None))

    assert outcome.submission == flag_of(task)
    assert outcome.stop_reason == "finished"
    assert outcome.error is None
    assert outcome.total_tool_calls == 1
    assert sandbox.commands == ["bash solution.sh"]
    assistant, tool = outcome.transcript
    assert (assistant.seq, assistant.role, tool.seq, tool.role) == (1, "assistant", 2, "tool")
    assert assistant.tool_calls is not None
    call = assistant.tool_calls[0]
    assert json.loads(call["function"]["arguments"]) == {"command": "bash solution.sh"}
    assert tool.tool_call_id == call["id"]
    assert tool.content is not None and flag_of(task) in tool.content
    assert tool.metadata["exit_code"] == 0


async def test_oracle_leaves_a_script_task_in_a_state_its_checker_passes(
    tmp_path: Path,
) -> None:
    task = SHIPPED["patch-vuln-function"]
    sandbox = await prepared_sandbox(task, tmp_path)
    checker = task.checker_path
    assert checker is not None and not (sandbox.root / checker.name).exists()

    outcome = await OracleAgent().run(sandbox, context_for(task, model=None))

    assert outcome.stop_reason == "finished"
    await sandbox.put_file(checker.name, checker.read_bytes(), mode=0o755)
    verdict = await sandbox.run(f"bash {checker.name}", timeout_sec=60)
    assert verdict.exit_code == 0, verdict.stdout + verdict.stderr


async def test_oracle_reports_an_error_for_a_task_without_reference_solution(
    tmp_path: Path,
) -> None:
    task = write_bundle(
        tmp_path / "bundle",
        "name: no-solution\ninstruction: do it\nverification: {type: flag, flag: 'FLAG{x}'}\n",
        {},
    )
    sandbox = TmpSandbox(tmp_path / "sandbox")

    outcome = await OracleAgent().run(sandbox, context_for(task))

    assert outcome.submission is None
    assert outcome.stop_reason == "error"
    assert outcome.error == "task has no reference solution"
    assert sandbox.commands == []


async def test_oracle_stops_with_timeout_when_the_solution_outlives_the_budget(
    tmp_path: Path,
) -> None:
    task = write_bundle(
        tmp_path / "bundle",
        "name: slow\ninstruction: wait\nverification: {type: flag, flag: 'FLAG{x}'}\n",
        {"solution.sh": "echo FLAG{x}\nsleep 30\n"},
    )
    sandbox = TmpSandbox(tmp_path / "sandbox")
    started = time.monotonic()

    outcome = await OracleAgent().run(sandbox, context_for(task, timeout_sec=0.5))

    assert time.monotonic() - started < 10
    assert outcome.stop_reason == "timeout"
    # What it printed before the kill is not an answer: a half-run is no solve.
    assert outcome.submission is None
    assert outcome.transcript[-1].metadata["timed_out"] is True


async def test_oracle_submission_is_the_last_non_empty_line_of_its_output(
    tmp_path: Path,
) -> None:
    task = write_bundle(
        tmp_path / "bundle",
        "name: chatty\ninstruction: talk\nverification: {type: flag, flag: 'FLAG{x}'}\n",
        {"solution.sh": "echo working...\necho '  FLAG{x}  '\necho\necho\n"},
    )
    outcome = await OracleAgent().run(TmpSandbox(tmp_path / "sandbox"), context_for(task))
    assert outcome.submission == "FLAG{x}"


# --- nop ----------------------------------------------------------------------------------


async def test_nop_submits_nothing_touches_nothing_and_says_so(tmp_path: Path) -> None:
    task = SHIPPED["decode-payload"]
    sandbox = await prepared_sandbox(task, tmp_path)

    outcome = await NopAgent().run(sandbox, context_for(task))

    assert outcome.submission is None
    assert outcome.stop_reason == "finished"
    assert sandbox.commands == []
    (message,) = outcome.transcript
    assert message.seq == 1 and message.role == "assistant"
    assert message.content and "nothing" in message.content


# --- openai: solving ----------------------------------------------------------------------


async def test_openai_agent_solves_with_shell_then_submit_and_counts_everything(
    server: ScriptedOpenAI, tmp_path: Path
) -> None:
    task = SHIPPED["decode-payload"]
    sandbox = await prepared_sandbox(task, tmp_path)
    server.push(
        shell("cat payload.txt"),
        submit(flag_of(task)),
    )

    outcome = await fast_openai().run(sandbox, context_for(task, base_url=server.base_url))

    assert outcome.submission == flag_of(task)
    assert outcome.stop_reason == "submitted"
    assert outcome.error is None
    assert outcome.generation_steps == 2
    assert outcome.total_tool_calls == 2
    assert (outcome.input_tokens, outcome.output_tokens) == (200, 40)
    assert outcome.duration_ms > 0
    assert sandbox.commands == ["cat payload.txt"]

    transcript = outcome.transcript
    assert [m.role for m in transcript] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
    ]
    assert [m.seq for m in transcript] == [1, 2, 3, 4, 5, 6]
    assert transcript[1].content == context_for(task).instruction
    first_call = transcript[2].tool_calls
    assert first_call is not None and first_call[0]["function"]["name"] == "shell"
    assert transcript[3].tool_call_id == first_call[0]["id"]
    assert transcript[3].content is not None
    assert "exit code: 0" in transcript[3].content
    assert "Analyst note" in transcript[3].content
    assert transcript[2].metadata["usage"] == {"prompt_tokens": 100, "completion_tokens": 20}

    # The second generation saw the shell result, answering the call it belongs to.
    second = server.requests[1].body["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "tool"]
    assert second[3]["tool_call_id"] == first_call[0]["id"]
    assert "Analyst note" in second[3]["content"]
    assert not server.exhausted


async def test_openai_request_carries_model_bearer_key_and_the_tool_schema(
    server: ScriptedOpenAI, tmp_path: Path
) -> None:
    task = SHIPPED["decode-payload"]
    server.push(submit("FLAG{guess}"))

    await fast_openai().run(
        TmpSandbox(tmp_path / "sandbox"), context_for(task, base_url=server.base_url + "/")
    )

    (request,) = server.requests
    assert request.method == "POST"
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.body["model"] == MODEL
    assert request.body["tool_choice"] == "auto"
    assert request.body["tools"] == TOOLS
    tools = {tool["function"]["name"]: tool["function"] for tool in request.body["tools"]}
    assert set(tools) == {"shell", "submit"}
    assert tools["shell"]["parameters"]["required"] == ["command"]
    assert tools["shell"]["parameters"]["properties"]["command"]["type"] == "string"
    assert tools["submit"]["parameters"]["required"] == ["answer"]
    system, user = request.body["messages"]
    assert system["role"] == "system" and "sandbox" in system["content"]
    assert user == {"role": "user", "content": task.render_instruction({})}


async def test_openai_request_without_api_key_sends_no_authorization(
    server: ScriptedOpenAI, tmp_path: Path
) -> None:
    server.push(submit("x"))
    await fast_openai().run(
        TmpSandbox(tmp_path / "sandbox"),
        context_for(SHIPPED["decode-payload"], base_url=server.base_url, api_key=None),
    )
    assert "authorization" not in server.requests[0].headers


async def test_openai_agent_hands_in_a_wrong_answer_unjudged(
    server: ScriptedOpenAI, tmp_path: Path
) -> None:
    task = SHIPPED["crack-weak-hash"]
    server.push(submit("FLAG{password123}"))

    outcome = await fast_openai().run(
        await prepared_sandbox(task, tmp_path), context_for(task, base_url=server.base_url)
    )

    # Verification is the runner's job: the agent reports what was submitted, without error.
    assert outcome.submission == "FLAG{password123}"
    assert outcome.submission != flag_of(task)
    assert outcome.stop_reason == "submitted"
    assert outcome.error is None


async def test_openai_reply_without_tool_calls_finishes_with_its_last_line_as_answer(
    server: ScriptedOpenAI, tmp_path: Path
) -> None:
    server.push(completion("I decoded it.\nFLAG{from_text}\n"))

    outcome = await fast_openai().run(
        TmpSandbox(tmp_path / "sandbox"),
        context_for(SHIPPED["decode-payload"], base_url=server.base_url),
    )

    assert outcome.stop_reason == "finished"
    assert outcome.submission == "FLAG{from_text}"
    assert outcome.generation_steps == 1 and outcome.total_tool_calls == 0
    assert outcome.transcript[-1].role == "assistant"
    assert outcome.transcript[-1].tool_calls is None


async def test_openai_tool_calls_after_submit_are_not_run(
    server: ScriptedOpenAI, tmp_path: Path
) -> None:
    sandbox = TmpSandbox(tmp_path / "sandbox")
    server.push(
        completion(
            tool_calls=[
                tool_call("submit", {"answer": "FLAG{a}"}),
                tool_call("shell", {"command": "touch after-submit"}),
            ]
        )
    )

    outcome = await fast_openai().run(
        sandbox, context_for(SHIPPED["decode-payload"], base_url=server.base_url)
    )

    assert outcome.submission == "FLAG{a}"
    assert sandbox.commands == []


async def test_openai_long_command_output_keeps_its_head_and_tail_within_the_limit(
    server: ScriptedOpenAI, tmp_path: Path
) -> None:
    server.push(
        shell("echo START; head -c 100000 /dev/zero | tr '\\0' x; echo; echo END"),
        submit("done"),
    )

    outcome = await fast_openai().run(
        TmpSandbox(tmp_path / "sandbox"),
        context_for(SHIPPED["decode-payload"], base_url=server.base_url),
    )

    output = outcome.transcript[3].content
    assert output is not None
    assert output.startswith("exit code: 0\n--- stdout ---\nSTART")
    assert "END" in output and "characters omitted" in output
    assert len(output) < 17 * 1024
    assert server.requests[1].body["messages"][3]["content"] == output


# --- openai: the model's mistakes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "told"),
    [
        (tool_call("shell", "{not json"), "not valid JSON"),
        (tool_call("shell", {"cmd": "ls"}), 'shell takes a JSON object {"command": "<string>"}'),
        (tool_call("submit", {"answer": 42}), 'submit takes a JSON object {"answer"'),
        (tool_call("browse", {"url": "x"}), "unknown tool 'browse'"),
    ],
)
async def test_openai_malformed_tool_call_is_answered_with_the_problem_and_the_loop_goes_on(
    call: dict[str, object], told: str, server: ScriptedOpenAI, tmp_path: Path
) -> None:
    sandbox = TmpSandbox(tmp_path / "sandbox")
    server.push(completion(tool_calls=[call]), submit("FLAG{after}"))

    outcome = await fast_openai().run(
        sandbox, context_for(SHIPPED["decode-payload"], base_url=server.base_url)
    )

    assert outcome.submission == "FLAG{after}"
    assert outcome.generation_steps == 2
    assert sandbox.commands == []
    complaint = outcome.transcript[3]
    assert complaint.role == "tool" and complaint.tool_call_id == call["id"]
    assert complaint.content is not None and told in complaint.content
    assert complaint.metadata["error"] is True
    # The model was told too, so it can fix its call.
    assert told in server.requests[1].body["messages"][-1]["content"]


async def test_openai_stops_after_max_steps_generations(
    server: ScriptedOpenAI, tmp_path: Path
) -> None:
    sandbox = TmpSandbox(tmp_path / "sandbox")
    server.push(*(shell(f"echo step {n}") for n in range(10)))

    outcome = await fast_openai().run(
        sandbox,
        context_for(SHIPPED["decode-payload"], base_url=server.base_url, max_steps=3),
    )

    assert outcome.stop_reason == "max_steps"
    assert outcome.submission is None
    assert outcome.generation_steps == 3
    assert outcome.total_tool_calls == 3
    assert len(server.requests) == 3
    assert sandbox.commands == ["echo step 0", "echo step 1", "echo step 2"]


async def test_openai_stops_with_timeout_when_a_command_outlives_the_budget(
    server: ScriptedOpenAI, tmp_path: Path
) -> None:
    server.push(shell("sleep 30"), submit("too late"))
    started = time.monotonic()

    outcome = await fast_openai().run(
        TmpSandbox(tmp_path / "sandbox"),
        context_for(SHIPPED["decode-payload"], base_url=server.base_url, timeout_sec=1.0),
    )

    assert time.monotonic() - started < 10
    assert outcome.stop_reason == "timeout"
    assert outcome.submission is None
    assert len(server.requests) == 1
    assert outcome.transcript[-1].metadata["timed_out"] is True


async def test_openai_stops_with_timeout_when_a_generation_outlives_the_budget(
    server: ScriptedOpenAI, tmp_path: Path
) -> None:
    slow = completion(tool_calls=[tool_call("submit", {"answer": "late"})])
    server.push(Reply(status=slow.status, body=slow.body, delay_sec=3.0))
    started = time.monotonic()

    outcome = await fast_openai().run(
        TmpSandbox(tmp_path / "sandbox"),
        context_for(SHIPPED["decode-payload"], base_url=server.base_url, timeout_sec=0.5),
    )

    assert time.monotonic() - started < 2.5
    assert outcome.stop_reason == "timeout"
    assert outcome.submission is None
    assert outcome.generation_steps == 0


async def test_openai_without_a_model_ends_in_error_without_calling_the_endpoint(
    server: ScriptedOpenAI, tmp_path: Path
) -> None:
    outcome = await fast_openai().run(
        TmpSandbox(tmp_path / "sandbox"),
        context_for(SHIPPED["decode-payload"], base_url=server.base_url, model=None),
    )
    assert outcome.stop_reason == "error"
    assert outcome.error == "the openai agent needs a model"
    assert server.requests == []


# --- openai: the endpoint's failures ------------------------------------------------------


async def test_openai_endpoint_answering_5xx_repeatedly_is_an_infra_error_after_retries(
    server: ScriptedOpenAI, tmp_path: Path
) -> None:
    server.push(*(error(500, "upstream overloaded") for _ in range(5)))

    with pytest.raises(AgentInfraError, match=r"after 3 attempts: HTTP 500: upstream overloaded"):
        await fast_openai().run(
            TmpSandbox(tmp_path / "sandbox"),
            context_for(SHIPPED["decode-payload"], base_url=server.base_url),
        )
    assert len(server.requests) == 3


async def test_openai_unreachable_endpoint_is_an_infra_error(tmp_path: Path) -> None:
    # A port that was free a moment ago: nothing listens there, so connecting is refused.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(AgentInfraError, match="ConnectError"):
        await fast_openai().run(
            TmpSandbox(tmp_path / "sandbox"),
            context_for(SHIPPED["decode-payload"], base_url=f"http://127.0.0.1:{port}/v1"),
        )


@pytest.mark.parametrize("transient", [error(503, "busy"), error(429, "rate limited")])
async def test_openai_transient_endpoint_failure_is_retried_and_the_run_goes_on(
    transient: Reply, server: ScriptedOpenAI, tmp_path: Path
) -> None:
    server.push(transient, submit("FLAG{ok}"))

    outcome = await fast_openai().run(
        TmpSandbox(tmp_path / "sandbox"),
        context_for(SHIPPED["decode-payload"], base_url=server.base_url),
    )

    assert outcome.submission == "FLAG{ok}"
    assert outcome.generation_steps == 1
    assert len(server.requests) == 2


async def test_openai_unreadable_success_body_is_retried_then_an_infra_error(
    server: ScriptedOpenAI, tmp_path: Path
) -> None:
    server.push(*(Reply(status=200, body="<html>gateway</html>") for _ in range(3)))
    with pytest.raises(AgentInfraError, match="unreadable chat completion"):
        await fast_openai().run(
            TmpSandbox(tmp_path / "sandbox"),
            context_for(SHIPPED["decode-payload"], base_url=server.base_url),
        )
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, f"Incorrect API key provided: {API_KEY}."),
        (404, "The model `scripted-model-1` does not exist."),
        (400, "Invalid value for 'tool_choice'."),
    ],
)
async def test_openai_endpoint_refusal_ends_the_run_in_error_without_retry(
    status: int, message: str, server: ScriptedOpenAI, tmp_path: Path
) -> None:
    server.push(error(status, message))

    outcome = await fast_openai().run(
        TmpSandbox(tmp_path / "sandbox"),
        context_for(SHIPPED["decode-payload"], base_url=server.base_url),
    )

    assert outcome.stop_reason == "error"
    assert outcome.submission is None
    assert len(server.requests) == 1
    assert outcome.error is not None
    assert outcome.error.startswith(f"model endpoint answered HTTP {status}: ")
    # An endpoint that echoes the key does not get it into the item or the transcript.
    assert API_KEY not in outcome.error
    assert API_KEY not in msgspec.json.encode(outcome.transcript).decode()
    assert outcome.error == outcome.transcript[-1].content
    if status == 401:
        assert outcome.error.endswith("Incorrect API key provided: [REDACTED].")
    else:
        assert outcome.error.endswith(message)


# --- openai: secrets ----------------------------------------------------------------------


async def test_openai_secret_values_are_redacted_everywhere_in_the_transcript(
    server: ScriptedOpenAI, tmp_path: Path
) -> None:
    secret = "hunter2-very-secret-value"
    sandbox = TmpSandbox(tmp_path / "sandbox")
    await sandbox.put_file("creds.txt", f"password={secret}\n".encode())
    server.push(
        shell("cat creds.txt"),
        completion(
            f"The password is {secret}, using it now.",
            [tool_call("shell", {"command": f"echo {secret} | wc -c"})],
        ),
        submit(f"FLAG{{{secret}}}"),
    )

    outcome = await fast_openai().run(
        sandbox,
        context_for(
            SHIPPED["decode-payload"],
            base_url=server.base_url,
            instruction=f"Log in with {secret}.",
            redact=(secret,),
        ),
    )

    # The command ran with the real value: redaction is about what is recorded.
    assert sandbox.commands[1] == f"echo {secret} | wc -c"
    recorded = msgspec.json.encode(outcome).decode()
    assert secret not in recorded
    assert API_KEY not in recorded
    assert outcome.submission == "FLAG{[REDACTED]}"
    by_seq = {m.seq: m for m in outcome.transcript}
    assert by_seq[2].content == "Log in with [REDACTED]."
    assert by_seq[4].content is not None and "password=[REDACTED]" in by_seq[4].content
    assert by_seq[5].content == "The password is [REDACTED], using it now."
    assert by_seq[5].tool_calls is not None
    arguments = by_seq[5].tool_calls[0]["function"]["arguments"]
    assert json.loads(arguments) == {"command": "echo [REDACTED] | wc -c"}
    # Tool output sent back to the model is redacted too: a secret the sandbox prints does
    # not leave for the endpoint.
    tool_result = server.requests[1].body["messages"][3]
    assert tool_result["role"] == "tool"
    assert secret not in tool_result["content"]
