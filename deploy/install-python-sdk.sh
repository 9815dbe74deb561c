#!/usr/bin/env bash
# Installs the official Exosphere Python SDK (`exospherehost`, pinned),
# nats-py (for the reference NATS runtime, runtimes/python) and pytest into
# the project-local venv `.tools/pysdk`, for the tests that drive the real
# SDK against this system (tests/python/) and the Python NATS runtime.
#
# The SDK declares Python >= 3.12; this machine has 3.11. The only 3.12-only
# syntax in it are about ten log lines of `runtime.py` with nested f-strings
# that reuse the outer double quote (PEP 701). They are rewritten mechanically
# (inner double quotes -> single quotes, on those lines only); nothing else of
# the SDK is changed. Idempotent: a second run changes nothing.
#
# Usage: deploy/install-python-sdk.sh        (PYTHON=python3.x to choose the interpreter)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.tools/pysdk"
PYTHON="${PYTHON:-python3}"
SDK_VERSION="0.0.3"
# The SDK's own dependencies, at the versions of upstream's lock file.
DEPS=("aiohttp==3.12.15" "pydantic==2.11.7")
PYTEST_VERSION="8.3.5"
# The reference NATS runtime (runtimes/python) uses nats-py.
NATS_PY_VERSION="2.12.0"

log() { printf '[install-python-sdk] %s\n' "$*" >&2; }

# One installer at a time (parallel tests may all call this script).
mkdir -p "$ROOT/.tools"
exec 9>"$ROOT/.tools/pysdk.lock"
flock 9

if ! "$VENV/bin/python" -c '' 2>/dev/null; then
    log "creating venv $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv --clear "$VENV"
fi
PY="$VENV/bin/python"

installed() {
    "$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1" 2>/dev/null || true
}
want="exospherehost==$SDK_VERSION ${DEPS[*]}"
have="exospherehost==$(installed exospherehost) aiohttp==$(installed aiohttp) pydantic==$(installed pydantic)"
if [ "$have" != "$want" ]; then
    log "installing $want (ignoring the SDK's Python >= 3.12 requirement)"
    "$PY" -m pip install --quiet --disable-pip-version-check \
        --ignore-requires-python "exospherehost==$SDK_VERSION" "${DEPS[@]}"
fi
if [ "$(installed nats-py)" != "$NATS_PY_VERSION" ]; then
    log "installing nats-py==$NATS_PY_VERSION"
    "$PY" -m pip install --quiet --disable-pip-version-check "nats-py==$NATS_PY_VERSION"
fi
if ! "$PY" -c 'import pytest' 2>/dev/null; then
    log "installing pytest==$PYTEST_VERSION"
    "$PY" -m pip install --quiet --disable-pip-version-check "pytest==$PYTEST_VERSION"
fi

RUNTIME="$("$PY" - <<'EOF'
import importlib.util, pathlib
spec = importlib.util.find_spec("exospherehost")
print(pathlib.Path(spec.origin).parent / "runtime.py")
EOF
)"

# The mechanical rewrite: on lines that do not compile alone because an
# f-string's replacement field contains a double quote, every double quote
# inside `{...}` of a double-quoted f-string becomes a single quote.
"$PY" - "$RUNTIME" <<'EOF'
import ast, pathlib, shutil, sys

path = sys.argv[1]

def rewrite(line):
    """Inner double quotes of double-quoted f-strings -> single quotes."""
    out, i, n = [], 0, len(line)
    while i < n:
        c = line[i]
        if c == "#":
            out.append(line[i:]); break
        if c == "'":  # a single-quoted string: copy it verbatim
            j = i + 1
            while j < n and line[j] != "'":
                j += 2 if line[j] == "\\" else 1
            out.append(line[i:j + 1]); i = j + 1; continue
        if c == '"':
            is_f = i > 0 and line[i - 1] in "fF" and (i < 2 or not (line[i - 2].isalnum() or line[i - 2] == "_"))
            j, depth = i + 1, 0
            buf = ['"']
            while j < n:
                d = line[j]
                if depth == 0:
                    if d == "\\":
                        buf.append(line[j:j + 2]); j += 2; continue
                    if d == '"':
                        break
                    if is_f and d == "{":
                        if line[j:j + 2] == "{{":
                            buf.append("{{"); j += 2; continue
                        depth = 1
                    buf.append(d); j += 1; continue
                # inside a replacement field
                if d == "{":
                    depth += 1
                elif d == "}":
                    depth -= 1
                elif d == '"':
                    d = "'"
                buf.append(d); j += 1
            buf.append('"')
            out.append("".join(buf)); i = j + 1; continue
        out.append(c); i += 1
    return "".join(out)

def compiles(line):
    try:
        ast.parse(line.strip())
        return True
    except SyntaxError:
        return False

src = open(path, encoding="utf-8").read()
lines = src.split("\n")
changed = 0
for k, line in enumerate(lines):
    if compiles(line) or 'f"' not in line:
        continue
    new = rewrite(line)
    if new != line and compiles(new):
        lines[k] = new
        changed += 1
new_src = "\n".join(lines)
if changed:
    open(path, "w", encoding="utf-8").write(new_src)
    # The rewrite keeps the file's size; drop the byte code compiled from the
    # old text so that it cannot be taken as current.
    shutil.rmtree(pathlib.Path(path).parent / "__pycache__", ignore_errors=True)
try:
    compile(new_src, path, "exec")
except SyntaxError as e:
    sys.exit(f"runtime.py still does not compile on this Python: {e}")
if changed:
    print(f"[install-python-sdk] rewrote {changed} nested f-string line(s) of {path}",
          file=sys.stderr)
EOF

"$PY" -c "import exospherehost, pytest; print('exospherehost', exospherehost.VERSION, 'ready in', '$VENV')"
