# Sourced by scripts/serve and scripts/test: make .venv (Python 3.11+) and install into it.
# Usage: . scripts/_venv.sh EXTRAS
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      python=$candidate
      break
    fi
  done
fi
if [ -z "$python" ]; then
  echo "rabbitsocks needs Python 3.11 or newer: install it, or set PYTHON=/path/to/python3.11." >&2
  exit 1
fi
venv=${RABBITSOCKS_VENV:-$root/.venv}
if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv with $("$python" --version)" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.rabbitsocks-installed-$1"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing rabbitsocks[$1] into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[$1]"
  touch "$stamp"
fi
