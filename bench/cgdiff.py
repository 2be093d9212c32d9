#!/usr/bin/env python3
"""Per-op self instructions by function from callgrind runs.

Usage: cgdiff.py OPS BASE_SMALL BASE_LARGE [VARIANT_SMALL VARIANT_LARGE] [--top N]

Each argument after OPS is a callgrind.out file; a pair (small, large) is two
runs of the same benchmark with benchtime differing by OPS operations, so
(large - small) / OPS cancels setup. With one pair: per-op self cost of each
function. With two pairs: the variant's per-op self cost minus the base's,
largest differences first. Self (exclusive) costs only: callgrind's inclusive
costs are unreliable for Go (goroutine switches break its call stacks).
"""
import re
import subprocess
import sys
from collections import defaultdict

LINE = re.compile(r"^\s*([\d,]+)\s+\([^)]*\)\s+(.*?)\s*(\[[^\]]*\])?\s*$")


def selfcost(path):
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", "--auto=no", path],
        check=True, capture_output=True, text=True).stdout
    costs = defaultdict(int)
    total = 0
    for line in out.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        n = int(m.group(1).replace(",", ""))
        name = m.group(2)
        if "PROGRAM TOTALS" in name:
            total = n
            continue
        # "file:function" -> function; drop callgrind's recursion suffix 'N
        fn = name.split(":", 1)[1] if ":" in name else name
        fn = re.sub(r"'\d+$", "", fn)
        costs[fn] += n
    return total, costs


def perop(ops, small, large):
    ts, cs = selfcost(small)
    tl, cl = selfcost(large)
    keys = set(cs) | set(cl)
    return (tl - ts) / ops, {k: (cl.get(k, 0) - cs.get(k, 0)) / ops for k in keys}


def main(argv):
    top = 40
    if "--top" in argv:
        i = argv.index("--top")
        top = int(argv[i + 1])
        del argv[i:i + 2]
    ops = int(argv[0])
    files = argv[1:]
    base_total, base = perop(ops, files[0], files[1])
    if len(files) == 2:
        print(f"total {base_total:10.0f} instructions/op")
        for k, v in sorted(base.items(), key=lambda kv: -kv[1])[:top]:
            print(f"{v:10.1f}  {k}")
        return
    var_total, var = perop(ops, files[2], files[3])
    print(f"total: base {base_total:.0f}, variant {var_total:.0f}, "
          f"difference {var_total - base_total:+.0f} instructions/op "
          f"(ratio {var_total / base_total:.3f})")
    keys = set(base) | set(var)
    diff = {k: var.get(k, 0) - base.get(k, 0) for k in keys}
    print(f"{'diff/op':>10}  {'variant/op':>10}  {'base/op':>10}  function")
    for k, v in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:top]:
        print(f"{v:+10.1f}  {var.get(k, 0):10.1f}  {base.get(k, 0):10.1f}  {k}")


if __name__ == "__main__":
    main(sys.argv[1:])
