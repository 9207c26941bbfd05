#!/usr/bin/env python3
"""The longest functions below a source folder (issue 14: none over 80 lines
without a comment saying why).

Usage: tools/fnlen.py [--check] [DIR] [N]   (default crates/core/src, 30 rows)

Counts from the `fn` line to its closing brace at the same indent; test
modules count too. A function's reason for its length is a sentence of its
doc comment starting "Long because". `--check` lists the functions over 80
lines without one and fails if there are any.
"""
import os
import re
import sys

FN = re.compile(r"^(\s*)(?:pub(?:\([^)]*\))?\s+)?(?:const\s+|async\s+|unsafe\s+)*fn\s+(\w+)")
LIMIT = 80


def doc_of(lines, i):
    """The doc comment and attributes right above line i."""
    out = []
    j = i - 1
    while j >= 0 and lines[j].strip().startswith(("///", "#[", "//")):
        out.append(lines[j].strip().lstrip("/").strip())
        j -= 1
    return " ".join(reversed(out))


def lengths(root):
    for dirpath, _, names in os.walk(root):
        for name in names:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            with open(path) as f:
                lines = f.read().split("\n")
            i = 0
            while i < len(lines):
                m = FN.match(lines[i])
                if m and not lines[i].rstrip().endswith(";"):
                    indent = len(m.group(1))
                    j = i
                    while j < len(lines) and not lines[j].rstrip().endswith("{"):
                        j += 1
                    k = j + 1
                    close = " " * indent + "}"
                    while k < len(lines) and not (
                        lines[k].startswith(close)
                        and len(lines[k]) - len(lines[k].lstrip()) == indent
                    ):
                        k += 1
                    why = "Long because" in doc_of(lines, i)
                    yield k - i + 1, path, m.group(2), i + 1, why
                    i = k
                i += 1


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    check = "--check" in sys.argv
    root = args[0] if args else "crates/core/src"
    most = int(args[1]) if len(args) > 1 else 30
    found = sorted(lengths(root), reverse=True)
    over = [f for f in found if f[0] > LIMIT]
    unexplained = [f for f in over if not f[4]]
    if check:
        for n, path, name, line, _ in unexplained:
            print(f"{n:5} {path}:{line} {name}: over {LIMIT} lines, no \"Long because\"")
        print(f"functions over {LIMIT} lines: {len(over)}, {len(unexplained)} without a reason")
        return 1 if unexplained else 0
    for n, path, name, line, why in found[:most]:
        print(f"{n:5} {path}:{line} {name}{' (says why)' if why else ''}")
    print(f"functions over {LIMIT} lines: {len(over)}, {len(unexplained)} without a reason")
    return 0


if __name__ == "__main__":
    sys.exit(main())
