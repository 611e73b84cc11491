#!/usr/bin/env python3
"""The bars of the crate split: non-test lines of Rust per crate and per
file (a file's lines up to its `#[cfg(test)]` module; crates' tests/,
benches/ and examples/ are left out), and cycles between the top-level
modules of each crate above core (a module uses another when one of its files names
`crate::other`). Prints each crate's share, the files over 900 non-test
lines and any cycle, and exits 1 if a bar is broken.

    scripts/code-size.py [--max-share 0.35] [--max-file 900]
"""
import argparse
import pathlib
import sys

root = pathlib.Path(__file__).resolve().parent.parent
ap = argparse.ArgumentParser()
ap.add_argument("--max-share", type=float, default=0.35)
ap.add_argument("--max-file", type=int, default=900)
args = ap.parse_args()


def non_test_lines(path):
    n = 0
    for line in path.read_text().splitlines():
        if line.strip() == "#[cfg(test)]":
            break
        n += 1
    return n


crates, files = {}, []
for src in sorted(root.glob("crates/*/src")):
    crate = src.parent.name
    for f in sorted(src.rglob("*.rs")):
        n = non_test_lines(f)
        crates[crate] = crates.get(crate, 0) + n
        files.append((n, f.relative_to(root)))
total = sum(crates.values())
bad = False
for crate, n in sorted(crates.items(), key=lambda kv: -kv[1]):
    share = n / total
    flag = "  <- over the bar" if share > args.max_share else ""
    bad |= bool(flag)
    print(f"{crate:10} {n:6} lines  {share:5.1%}{flag}")
print(f"{'total':10} {total:6} lines")
for n, f in sorted(files, reverse=True):
    if n > args.max_file:
        bad = True
        print(f"over {args.max_file} non-test lines: {f} ({n})")
import re


def module_of(src, f):
    rel = f.relative_to(src).parts
    return None if rel[0] in ("lib.rs", "main.rs") else rel[0].removesuffix(".rs")


# Cycles are checked in the crates above the broker model (core, store and
# protocol are tested on their own, without sockets).
ABOVE_CORE = ("node", "amqp", "admin", "cluster", "warren")
for src in sorted(root.glob("crates/*/src")):
    if src.parent.name not in ABOVE_CORE:
        continue
    uses = {}
    for f in src.rglob("*.rs"):
        m = module_of(src, f)
        if m is None:
            continue
        text = f.read_text().split("#[cfg(test)]")[0]
        for other in re.findall(r"crate::(\w+)", text):
            if other != m:
                uses.setdefault(m, set()).add(other)
    # A cycle: a module that reaches itself.
    for start in sorted(uses):
        seen, todo = set(), list(uses.get(start, ()))
        while todo:
            n = todo.pop()
            if n == start:
                bad = True
                print(f"cycle in {src.parent.name}: {start} reaches itself ({sorted(uses[start])})")
                break
            if n not in seen:
                seen.add(n)
                todo.extend(uses.get(n, ()))
sys.exit(1 if bad else 0)
