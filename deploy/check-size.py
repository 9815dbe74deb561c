#!/usr/bin/env python3
"""Size limits of the code outside tests: no function over 80 lines, no
file over 800 lines.

Scans the `.rs` files of `services/`, `shared/`, `runtimes/` and
`tests/bench/` that are not test files (`tests/` folders, inline
`#[cfg(test)]` modules are cut off where they start). A function is
measured from its `fn` line to its closing brace. Prints every offender
and exits 1 if there is one; `--report N` lists the N longest functions;
`--allow PREFIX` reports offenders under PREFIX without failing (a known
backlog: CI passes `--allow tests/bench/` until the bench is split).
"""

import argparse
import pathlib
import re
import sys

MAX_FN = 80
MAX_FILE = 800
ROOTS = ["services", "shared", "runtimes", "tests/bench"]
FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")


def source_files(root: pathlib.Path):
    for top in ROOTS:
        for p in sorted((root / top).rglob("*.rs")):
            rel = p.relative_to(root)
            parts = rel.parts
            if "target" in parts or "tests" in parts[1:] or "benches" in parts:
                continue
            yield rel, p


def production_lines(path: pathlib.Path):
    """The file's lines up to its inline test module, if any."""
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "#[cfg(test)]" and i + 1 < len(lines) and re.match(
            r"^\s*mod\s+\w+", lines[i + 1]
        ):
            return lines[:i]
    return lines


def braces(text: str):
    """Yields (offset, char) for every `{` and `}` of Rust code `text`
    outside strings, raw strings, chars and comments."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        prev = text[i - 1] if i else " "
        if text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c in "rb" and not (prev.isalnum() or prev == "_") and re.match(r'b?r#*"', text[i:]):
            m = re.match(r'b?r(#*)"', text[i:])
            close = '"' + m.group(1)
            j = text.find(close, i + len(m.group(0)))
            i = n if j < 0 else j + len(close)
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            i = j + 1
        elif c == "'":
            m = re.match(r"'(\\[^']*|[^'\\])'", text[i:])
            i += len(m.group(0)) if m else 1  # else a lifetime
        else:
            if c in "{}":
                yield i, c
            i += 1


def functions(lines):
    """(name, first line, length) of every function with a body."""
    text = "\n".join(lines)
    line_of, k = [], 0
    for line in lines:
        line_of.extend([k] * (len(line) + 1))
        k += 1
    fn_at = {}
    for k, line in enumerate(lines):
        m = FN.match(line)
        if m and not line.rstrip().endswith(";"):
            fn_at[k] = m.group(6)
    pending = sorted(fn_at)
    out, stack = [], []
    for off, c in braces(text):
        ln = line_of[off]
        if c == "{":
            name = None
            while pending and pending[0] <= ln:
                first = pending.pop(0)
                name = (fn_at[first], first)
            stack.append(name)
        elif stack:
            name = stack.pop()
            if name:
                out.append((name[0], name[1] + 1, ln - name[1] + 1))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--report", type=int, default=0, help="list the N longest functions")
    ap.add_argument("--allow", action="append", default=[], help="path prefix reported, not failed")
    args = ap.parse_args()
    root = pathlib.Path(__file__).resolve().parent.parent
    bad, all_fns = [], []
    for rel, path in source_files(root):
        lines = production_lines(path)
        if len(lines) > MAX_FILE:
            bad.append(f"{rel}: {len(lines)} lines outside tests (max {MAX_FILE})")
        for name, line, length in functions(lines):
            all_fns.append((length, f"{rel}:{line} {name}"))
            if length > MAX_FN:
                bad.append(f"{rel}:{line}: fn {name} is {length} lines (max {MAX_FN})")
    for length, where in sorted(all_fns, reverse=True)[: args.report]:
        print(f"{length:5} {where}")
    allowed = [b for b in bad if any(b.startswith(a) for a in args.allow)]
    bad = [b for b in bad if b not in allowed]
    for b in allowed:
        print(f"allowed for now: {b}", file=sys.stderr)
    for b in bad:
        print(b, file=sys.stderr)
    if bad:
        print(f"{len(bad)} size limit(s) exceeded", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
