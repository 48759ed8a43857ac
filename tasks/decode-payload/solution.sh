#!/usr/bin/env bash
# Reference solution: base64 -> reversed hex string -> bytes -> XOR with the repeating key
# named in the analyst note. Writes the flag to /tmp/result.txt (and prints it).
set -euo pipefail
python3 - <<'PY'
import base64

lines = [line for line in open("payload.txt").read().splitlines() if not line.startswith("#")]
hex_reversed = base64.b64decode("".join(lines)).decode()
xored = bytes.fromhex(hex_reversed[::-1])
key = b"assay"
flag = bytes(b ^ key[i % len(key)] for i, b in enumerate(xored)).decode()
open("/tmp/result.txt", "w").write(flag + "\n")
print(flag)
PY
