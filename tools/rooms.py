#!/usr/bin/env python3
"""Import circles between crest-core's rooms (issue 14).

A room is a top-level module of crates/core/src (`files`, `ns`, `mm`,
`remote`, ...). Every path a file names (`crate::x::y`, `super::z`,
`use` groups included; test modules left out) is an edge from the file's
room to the room of the module it names. The check fails when the rooms
import each other in a circle (and prints the edges that close it), or
when a room uses one that comes after it in the order lib.rs's doc gives.

Circles between the files of one room are printed too; `--strict` (as
`.ci/run` uses it) fails on them as well.

Usage: tools/rooms.py [--strict] [crates/core/src]
"""
import os
import re
import sys

USE = re.compile(
    r"\b(crate|super|self)((?:::\w+)*)(::\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}|::\*)?"
)
TEST_MOD = re.compile(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{")


def modules(root):
    """Module path (tuple) -> file, for every .rs file below root."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            if not name.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            parts = rel[:-3].split(os.sep)
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            out[tuple(parts)] = rel
    return out


def without_tests(src):
    """The source without `#[cfg(test)] mod x { ... }` blocks and comments."""
    while True:
        m = TEST_MOD.search(src)
        if not m:
            break
        depth, j = 1, m.end()
        while depth and j < len(src):
            depth += {"{": 1, "}": -1}.get(src[j], 0)
            j += 1
        src = src[: m.start()] + src[j:]
    src = re.sub(r"//[^\n]*", "", src)
    # re-exporting a child module's items (`pub use child::x`) makes them
    # the module's face; it is not a use of the child
    children = "|".join(re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", src, re.M))
    if children:
        face = r"^\s*pub(?:\([^)]*\))?\s+use\s+(?:self::)?(?:" + children + r")::[^;]*;"
        src = re.sub(face, "", src, flags=re.M)
    return src


def named_paths(src):
    """Every `crate::`/`super::`/`self::` path, `use` groups expanded, and
    every bare path through a child module the file declares (`mod x;`
    then `x::y`, named as `self::x::y`)."""
    children = re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", src, re.M)
    for child in children:
        pattern = r"(?<![\w:])" + child + r"((?:::\w+)*)(::\{([^{}]*)\})?"
        for m in re.finditer(pattern, src):
            if not (m.group(1) or m.group(2)):
                continue
            base = ["self", child] + [p for p in m.group(1).split("::") if p]
            yield base
            if m.group(3):
                for item in re.sub(r"\{[^{}]*\}", "", m.group(3)).split(","):
                    item = item.strip().split(" as ")[0]
                    if item and item != "self":
                        yield base + item.split("::")
    for m in USE.finditer(src):
        if not (m.group(2) or m.group(3)):
            continue
        base = [m.group(1)] + [p for p in m.group(2).split("::") if p]
        yield base
        if m.group(4):
            flat = re.sub(r"\{[^{}]*\}", "", m.group(4))
            for item in flat.split(","):
                item = item.strip().split(" as ")[0]
                if item and item != "self":
                    yield base + item.split("::")


def edges_of(root):
    mods = modules(root)

    def resolve(path):
        for n in range(len(path), 0, -1):
            if tuple(path[:n]) in mods:
                return tuple(path[:n])
        return None

    edges = {m: set() for m in mods}
    for m, rel in mods.items():
        with open(os.path.join(root, rel)) as f:
            src = without_tests(f.read())
        for path in named_paths(src):
            if path[0] == "crate":
                target = path[1:]
            elif path[0] == "self":
                target = list(m) + path[1:]
            else:
                up = 0
                while path and path[0] == "super":
                    up, path = up + 1, path[1:]
                target = list(m[: len(m) - up]) + path
            t = resolve(target)
            if t is not None and t != m:
                edges[m].add(t)
    return edges


def circles(graph):
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def declared_order(root):
    """The rooms in the order lib.rs's doc gives them (lowest first)."""
    with open(os.path.join(root, "lib.rs")) as f:
        doc = "".join(l[3:] for l in f if l.startswith("//!"))
    m = re.search(r"in this order \(lowest first\):(.*?)`tools/rooms.py", doc, re.S)
    if not m:
        return None
    return [w for w in re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", m.group(1)))]


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    strict = "--strict" in sys.argv
    root = args[0] if args else "crates/core/src"
    edges = edges_of(root)
    room = lambda m: m[0] if m else "lib"
    show = lambda m: "/".join(m) or "lib"
    rooms = {}
    for m, targets in edges.items():
        for t in targets:
            if room(m) != room(t):
                rooms.setdefault(room(m), set()).add(room(t))
    failed = False
    for c in circles(rooms):
        failed = True
        print("rooms import each other in a circle:", " ".join(c))
        for m, targets in sorted(edges.items()):
            for t in sorted(targets):
                if room(m) in c and room(t) in c and room(m) != room(t):
                    print(f"  {show(m)} -> {show(t)}")
    order = declared_order(root)
    if order is None:
        failed = True
        print("lib.rs's doc gives no order of the rooms")
    else:
        for m, targets in sorted(edges.items()):
            for t in sorted(targets):
                a, b = room(m), room(t)
                if a == b or "lib" in (a, b):
                    continue
                if a not in order or b not in order:
                    failed = True
                    print(f"room {a if a not in order else b} is not in lib.rs's order")
                elif order.index(b) > order.index(a):
                    failed = True
                    print(f"{show(m)} -> {show(t)}: a room uses one after it in lib.rs's order")
    inner = [c for c in circles(edges) if len({room(m) for m in c}) == 1]
    for c in inner:
        print(f"files of room {room(c[0])} import each other:", " ".join(show(m) for m in c))
        failed |= strict
    if not failed:
        print(f"rooms: no import circle between the {len(set(map(room, edges)))} rooms")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
