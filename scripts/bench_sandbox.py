"""What one sandboxed item costs, per isolation level: wall time and CPU (the worker's own and
its children's: bwrap, nsenter, the exec server, bash), one item at a time and N at once.

    .venv/bin/python scripts/bench_sandbox.py [--items N] [--concurrency C]
        [--levels weak,strict,warm]

Each item is what the oracle does on a trivial flag task: provision a sandbox, put a file,
run one command that prints the flag, read a file back, end the agent's turn (kill_all), and
destroy it. Levels run interleaved, round after round, so a busy machine skews both alike;
min / median / max over the rounds are printed, and strict's extra cost over weak.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infrastructure.sandbox.local import LocalSandboxProvider
from infrastructure.sandbox.local.warm_pool import WarmPool
from infrastructure.sandbox.protocol import SandboxSpec

FLAG = "FLAG{bench}"


Provider = LocalSandboxProvider | WarmPool


async def one_item(provider: Provider, index: int) -> None:
    box = await provider.provision(SandboxSpec(item_id=f"bench-{index}", worker_id="bench"))
    try:
        await box.put_file("solution.sh", f"echo '{FLAG}' > answer.txt; echo '{FLAG}'\n".encode())
        result = await box.run("bash solution.sh", timeout_sec=30)
        assert result.stdout.strip() == FLAG, result
        await box.kill_all()
        assert (await box.get_file("answer.txt")).strip() == FLAG.encode()
    finally:
        await box.destroy()


def cpu_seconds() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


async def one_round(provider: Provider, items: int, concurrency: int) -> tuple[float, float, float]:
    """(wall ms, worker CPU ms, children CPU ms) per item. A warm pool starts the round full
    (as a worker's is when claims arrive) and refills while it runs; its CPU until the end of
    the round is counted, what it spends refilling after that goes to the next round."""
    if isinstance(provider, WarmPool):
        await warm_up(provider)
    gate = asyncio.Semaphore(concurrency)

    async def bounded(index: int) -> None:
        async with gate:
            await one_item(provider, index)

    own0, kids0 = cpu_seconds()
    started = time.perf_counter()
    await asyncio.gather(*(bounded(i) for i in range(items)))
    wall = time.perf_counter() - started
    own1, kids1 = cpu_seconds()
    return tuple(x * 1000 / items for x in (wall, own1 - own0, kids1 - kids0))  # type: ignore[return-value]


async def warm_up(pool: WarmPool) -> None:
    """Let the pool fill (its first provision sets it going)."""
    if pool.handed_out == 0:
        await one_item(pool, -1)
    while len(pool.warm_ids()) < pool.size:
        await asyncio.sleep(0.05)


def summary(values: list[float]) -> str:
    return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}"


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="assay-bench-sandbox-", dir="/var/tmp"))
    providers: dict[str, Provider] = {}
    for level in args.levels:
        isolation = "strict" if level == "warm" else level
        local = LocalSandboxProvider(root / level, isolation=isolation)
        providers[level] = WarmPool(local, args.concurrency) if level == "warm" else local
    for provider in providers.values():
        await one_round(provider, 4, 4)  # warm-up: probes, caches
    figures: dict[str, list[tuple[float, float, float]]] = {level: [] for level in providers}
    for _ in range(args.rounds):
        for level, provider in providers.items():
            figures[level].append(await one_round(provider, args.items, args.concurrency))
    print(
        f"\n## One sandboxed item (provision, put, run, kill, get, destroy): {args.items} items"
        f" per round at concurrency {args.concurrency}, {args.rounds} rounds interleaved;"
        " min / median / max\n"
    )
    print(
        "| level | wall ms/item | worker CPU ms/item | children CPU ms/item | total CPU ms/item |"
    )
    print("|---|---|---|---|---|")
    medians: dict[str, float] = {}
    for level, rows in figures.items():
        walls = [r[0] for r in rows]
        own = [r[1] for r in rows]
        kids = [r[2] for r in rows]
        total = [r[1] + r[2] for r in rows]
        medians[level] = statistics.median(walls)
        print(
            f"| {level} | {summary(walls)} | {summary(own)} | {summary(kids)} | {summary(total)} |"
        )
    if "weak" in medians and "strict" in medians:
        extra = medians["strict"] - medians["weak"]
        ratio = medians["strict"] / medians["weak"]
        print(f"\nstrict - weak, median wall: {extra:+.1f} ms/item (strict / weak = {ratio:.2f})")
    if "warm" in medians and "strict" in medians:
        ratio = medians["warm"] / medians["strict"]
        print(f"warm / strict, median wall: {ratio:.2f}")
    for provider in providers.values():
        if isinstance(provider, WarmPool):
            await provider.close()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--levels",
        type=lambda raw: raw.split(","),
        default=["weak", "strict", "warm"],
        help="weak, strict, warm (strict from a warm pool sized by --concurrency)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
