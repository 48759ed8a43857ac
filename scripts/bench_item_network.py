"""Time to create and destroy an item network (root needed): no policy, and a policy with an
IP, a CIDR and names (which starts slirp4netns and installs the filter).

    sudo .venv/bin/python scripts/bench_item_network.py [rounds]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from infrastructure.sandbox.network import ItemNetwork
from infrastructure.sandbox.protocol import EgressPolicy

POLICIES: dict[str, EgressPolicy | None] = {
    "egress=None": None,
    "policy (IP, CIDR, FQDN, *.suffix)": EgressPolicy(
        ("192.0.2.10", "198.51.100.0/24", "example.com", "*.example.org")
    ),
}


async def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="assay-netbench-") as tmp:
        root = Path(tmp)
        for label, policy in POLICIES.items():
            create_ms: list[float] = []
            destroy_ms: list[float] = []
            for i in range(rounds):
                t0 = time.perf_counter()
                network = await ItemNetwork.create(root, f"bench{i}", policy, worker_id="bench")
                t1 = time.perf_counter()
                await network.destroy()
                t2 = time.perf_counter()
                create_ms.append((t1 - t0) * 1000)
                destroy_ms.append((t2 - t1) * 1000)
            print(
                f"{label:36} create median {statistics.median(create_ms):6.1f} ms"
                f" (max {max(create_ms):6.1f}), destroy median"
                f" {statistics.median(destroy_ms):6.1f} ms (max {max(destroy_ms):6.1f}),"
                f" {rounds} rounds"
            )


if __name__ == "__main__":
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
