#!/usr/bin/env python3
"""Non-test lines of Rust per crate and per file (the bars of the crate
split): a file's lines up to its `#[cfg(test)]` module; crates' tests/,
benches/ and examples/ are left out. Prints each crate's share, the files
over 900 non-test lines, and exits 1 if a bar is broken.

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
sys.exit(1 if bad else 0)
