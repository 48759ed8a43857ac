#!/usr/bin/env bash
# Checker: runs after the agent, as a principal of its own, in the agent's workspace (read-only).
# Passes (exit 0) only when the command injection in logtool.count_matches no longer works AND
# the function still counts correctly. It brings its own fixtures, so nothing the agent changed
# besides logtool.py affects the verdict.
set -uo pipefail
task_dir=$(pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cd "$scratch" || exit 2

cat > fixture.log <<'LOG'
10:00 [INFO] service started
10:01 [ERROR] disk full on /var/data
10:02 [WARN] cache miss ratio high
10:03 [ERROR] upstream timeout
10:04 [WARN] retrying upstream
10:05 [ERROR] upstream timeout
LOG
mkdir -p archive
printf '%s\n' 'old ERROR one' 'fine' 'old ERROR two' > archive/2024.log

PYTHONDONTWRITEBYTECODE=1 TASK_DIR="$task_dir" MARKERS="$scratch/markers" python3 - <<'PY'
import os
import sys

sys.path.insert(0, os.environ["TASK_DIR"])
try:
    from logtool import count_matches
except Exception as exc:
    print(f"functionality: FAILED: cannot import logtool.count_matches: {exc!r}")
    sys.exit(1)

markers = os.environ["MARKERS"]
os.makedirs(markers)
payloads = [
    ("ERROR", f"fixture.log; touch {markers}/semicolon"),
    ("ERROR", f"$(touch {markers}/substitution)"),
    ("ERROR", f"`touch {markers}/backticks`"),
    ("ERROR", f"fixture.log && touch {markers}/and"),
    (f"x' fixture.log; touch {markers}/quote; echo '", "fixture.log"),
]
for pattern, path in payloads:
    try:
        count_matches(pattern, path)
    except Exception:
        pass  # refusing odd input is a fine fix; only side effects count here
exploited = sorted(os.listdir(markers))

expected = [
    (("ERROR", "fixture.log"), 3),
    (("disk full", "fixture.log"), 1),
    (("[WARN]", "fixture.log"), 2),
    (("upstream timeout", "fixture.log"), 2),
    (("no such line", "fixture.log"), 0),
    (("ERROR", "archive/2024.log"), 2),
]
wrong = []
for args, want in expected:
    try:
        got = count_matches(*args)
    except Exception as exc:
        got = repr(exc)
    if got != want:
        wrong.append(f"count_matches{args!r} = {got!r}, expected {want}")

print("exploit: WORKED (" + ", ".join(exploited) + ")" if exploited else "exploit: blocked")
print("functionality: FAILED: " + "; ".join(wrong) if wrong else "functionality: ok")
sys.exit(1 if exploited or wrong else 0)
PY
