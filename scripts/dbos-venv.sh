#!/usr/bin/env bash
# Creates (once) the Python venv the real-DBOS tests run their app in, and prints the
# path of its python on stdout. Idempotent: when the venv already has the pinned dbos
# it does nothing and touches no network.
#   STALLWATCH_DBOS_VENV  where the venv lives (default: target/dbos-venv)
#   PYTHON                the interpreter to build it from (default: python3; dbos 3.4 on
#                         Python >= 3.12 needs SQLite >= 3.42, Debian's 3.11 works as is)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv="${STALLWATCH_DBOS_VENV:-target/dbos-venv}"
requirements="tests/dbos/requirements.txt"
python="${PYTHON:-python3}"

# The pinned version, e.g. "3.4.0" from "dbos==3.4.0".
want="$(sed -n 's/^dbos==\([^[:space:]#]*\).*/\1/p' "$requirements")"
[ -n "$want" ] || { echo "dbos-venv: no dbos==VERSION pin in $requirements" >&2; exit 1; }

have() {
  [ -x "$venv/bin/python" ] &&
    [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("dbos"))' 2>/dev/null)" = "$want" ]
}

if ! have; then
  echo "dbos-venv: installing dbos==$want into $venv" >&2
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --quiet -r "$requirements" >&2
  have || { echo "dbos-venv: dbos==$want is still not importable from $venv/bin/python" >&2; exit 1; }
fi

# Absolute, so a caller in another working directory can run it.
echo "$(cd "$venv" && pwd)/bin/python"
