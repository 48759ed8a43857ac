"""Time a trivial item on the docker provider: provision, one `echo`, destroy; with no service
and with one context service (python's http.server, waited for until it accepts).

    .venv/bin/python scripts/bench_docker_sandbox.py [rounds]

Needs a Docker daemon and the test image (bash scripts/docker_up.sh).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from infrastructure.sandbox.docker import DockerSandboxProvider
from infrastructure.sandbox.protocol import SandboxSpec, ServiceSpec


async def one(provider: DockerSandboxProvider, spec: SandboxSpec) -> tuple[float, float, float]:
    started = time.perf_counter()
    box = await provider.provision(spec)
    provisioned = time.perf_counter()
    result = await box.run("echo hi", timeout_sec=10)
    assert result.stdout == "hi\n", result
    ran = time.perf_counter()
    await box.destroy()
    return provisioned - started, ran - provisioned, time.perf_counter() - ran


def show(label: str, samples: list[tuple[float, float, float]]) -> None:
    def ms(values: list[float]) -> str:
        return f"median {statistics.median(values) * 1000:6.0f} ms, max {max(values) * 1000:6.0f}"

    phases = list(zip(*samples, strict=True))
    print(f"{label} ({len(samples)} rounds)")
    for name, values in zip(("provision", "run", "destroy"), phases, strict=True):
        print(f"  {name:9} {ms(list(values))}")
    print(f"  {'total':9} {ms([sum(s) for s in samples])}")


async def main(rounds: int) -> None:
    provider = DockerSandboxProvider()
    with tempfile.TemporaryDirectory() as folder:
        context = Path(folder)
        (context / "index.html").write_text("hello\n")
        web = ServiceSpec(
            name="web",
            context=str(context),
            command="exec python3 -m http.server 8080",
            ports=(8080,),
        )
        for label, spec in (
            ("no service", SandboxSpec(item_id="bench", worker_id="bench")),
            ("one service", SandboxSpec(item_id="bench", worker_id="bench", services=(web,))),
        ):
            await one(provider, spec)  # warm-up: first network, first image use
            show(label, [await one(provider, spec) for _ in range(rounds)])


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10))
