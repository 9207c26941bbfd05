#!/usr/bin/env python3
"""The longest functions below a source folder (issue 14: none over 80 lines
without a comment saying why).

Usage: tools/fnlen.py [DIR] [N]   (default crates/core/src, 30 rows)
Counts from the `fn` line to its closing brace at the same indent; test
modules count too.
"""
import os
import re
import sys

FN = re.compile(r"^(\s*)(?:pub(?:\([^)]*\))?\s+)?(?:const\s+|async\s+|unsafe\s+)*fn\s+(\w+)")


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
                    yield k - i + 1, path, m.group(2), i + 1
                    i = k
                i += 1


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "crates/core/src"
    most = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    found = sorted(lengths(root), reverse=True)
    for n, path, name, line in found[:most]:
        print(f"{n:5} {path}:{line} {name}")
    print(f"functions over 80 lines: {sum(1 for f in found if f[0] > 80)}")


if __name__ == "__main__":
    main()
