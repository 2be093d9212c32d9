#!/usr/bin/env python3
"""Client-path instructions per GET from callgrind runs, without the Go
scheduler's idle work.

Usage: cgclient.py OPS SMALL LARGE DIR TAG [TAG ...]

Reads DIR/TAG.VARIANT.SMALL.out and DIR/TAG.VARIANT.LARGE.out for those of
the variants plain, noop-recorder, noop-floor, instrumented,
instrumented-auto and redisotel that are present (LARGE - SMALL = OPS
operations) and prints, per TAG, each variant's per-op self
instructions summed over every function except the scheduler's and the
clock's (findRunnable, netpoll, lock2, sysmon, nanotime, ...). Under
valgrind, which runs one thread at a time, how much those functions run
depends on timing and varies by several percent between identical runs; the
rest is the work a GET does, and repeats to about 2%.
"""
import os
import re
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from cgdiff import perop  # noqa: E402

SCHED = re.compile(r"^runtime\.(findRunnable|stealWork|netpoll|lock2|unlock2|sysmon|retake|park_m|"
                   r"schedule|futex|futexsleep|futexwakeup|procyield|procyieldAsm|osyield|usleep|"
                   r"runqgrab|runqsteal|checkTimers|notesleep|notewakeup|mPark|stopm|startm|wakep|"
                   r"resetspinning|handoffp|injectglist|nanotime1|casgstatus|execute|gopark|goready|"
                   r"ready|mcall|gosched_m|goschedImpl|runqput|runqget|globrunqget|pidleget|pidleput|"
                   r"netpollblock|netpollready|netpollunblock|nanotime|walltime|timeSleepUntil|"
                   r"exitsyscall|entersyscall|reentersyscall|exitsyscallfast|entersyscall_sysmon|"
                   r"releasep|acquirep|wirep|semasleep|semawakeup|clone|newm|mstart|mstart1|mexit|"
                   r"systemstack|morestack|gcBgMarkWorker|bgsweep|bgscavenge).*")
VARIANTS = ["plain", "noop-recorder", "noop-floor", "noop-floor-tcp", "instrumented", "instrumented-auto", "redisotel"]


def main(argv):
    ops, small, large, d = int(argv[0]), argv[1], argv[2], argv[3]
    for tag in argv[4:]:
        vals = {}
        for v in VARIANTS:
            if not os.path.exists(f"{d}/{tag}.{v}.{small}.out"):
                continue
            _, costs = perop(ops, f"{d}/{tag}.{v}.{small}.out", f"{d}/{tag}.{v}.{large}.out")
            vals[v] = sum(c for f, c in costs.items() if not SCHED.match(f))
        p = vals["plain"]
        print(tag, " ".join(f"{v}={c:.0f}({c / p:.3f})" for v, c in vals.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
