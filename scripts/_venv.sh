# Sourced by scripts/serve and scripts/test: create .venv if missing and (re)install the
# project when pyproject.toml changed since the last install. $1 = pip extras ("" or "[dev]").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
STAMP=".venv/.assay-installed$1"
# A dev install is a plain install and more: scripts/serve after scripts/test installs nothing.
if [ -z "$1" ] && [ -f ".venv/.assay-installed[dev]" ] && [ ! pyproject.toml -nt ".venv/.assay-installed[dev]" ]; then
    STAMP=".venv/.assay-installed[dev]"
fi
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".$1"
    touch "$STAMP"
fi
