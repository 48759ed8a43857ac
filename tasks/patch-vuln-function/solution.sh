#!/usr/bin/env bash
# Reference solution: call grep with an argument list instead of a shell command line, so the
# pattern and the path reach grep as data and are never parsed by a shell.
set -euo pipefail
python3 - <<'PY'
import pathlib

module = pathlib.Path("logtool.py")
source = module.read_text()
vulnerable = (
    "    command = f\"grep -c -F -e '{pattern}' {path}\"\n"
    "    result = subprocess.run(command, shell=True, capture_output=True, text=True)\n"
)
fixed = (
    "    # No shell: an argument list passes pattern and path to grep as data.\n"
    "    result = subprocess.run(\n"
    "        [\"grep\", \"-c\", \"-F\", \"-e\", pattern, \"--\", path], capture_output=True, text=True\n"
    "    )\n"
)
if vulnerable not in source:
    raise SystemExit("vulnerable code not found; logtool.py changed?")
module.write_text(source.replace(vulnerable, fixed))
print("patched logtool.count_matches")
PY
