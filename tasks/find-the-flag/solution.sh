#!/usr/bin/env bash
# Reference solution: plain-text flags are decoys, so try every file as base64 and keep the
# one that decodes to a flag. Writes it to /tmp/result.txt (and prints it).
set -euo pipefail
python3 - <<'PY'
import base64
import binascii
import pathlib
import re

for path in sorted(pathlib.Path("haystack").rglob("*")):
    if not path.is_file():
        continue
    try:
        decoded = base64.b64decode(path.read_text().strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        continue
    match = re.fullmatch(r"\s*(FLAG\{[^}]*\})\s*", decoded)
    if match:
        print(f"found in {path}")
        print(match.group(1))
        open("/tmp/result.txt", "w").write(match.group(1) + "\n")
        break
PY
