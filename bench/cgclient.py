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

A second line per TAG ("narrow") also leaves out the runtime functions
found to vary two- to fourfold between identical runs on this machine
(2026-11-30): idle and deadlock accounting, the exit from a system call,
the GC's stack-scan status changes and trigger test, timers, and the fill
of the interface-assertion caches (typeAssert, getitab), which happens at
a random moment of each run. It repeats to about 0.5%. Leaving out work
common to every variant raises the ratios a little: the narrow ratios are
not the flattering ones.
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
NARROW = re.compile(r"^runtime\.(setBlockOnExitSyscall|incidlelocked|checkdead|casfrom_Gscanstatus|"
                    r"castogscanstatus|gcTrigger\.test|\(\*timers\)|\(\*timer\)|checkRunqsNoP|checkTimersNoP|"
                    r"releasepNoTrace|\(\*limiterEvent\)|mergeSummaries|typeAssert|getitab|\(\*itabTableType\)).*")
VARIANTS = ["plain", "noop-recorder", "noop-floor", "instrumented", "instrumented-auto", "redisotel"]


def main(argv):
    ops, small, large, d = int(argv[0]), argv[1], argv[2], argv[3]
    for tag in argv[4:]:
        vals, narrow = {}, {}
        for v in VARIANTS:
            if not os.path.exists(f"{d}/{tag}.{v}.{small}.out"):
                continue
            _, costs = perop(ops, f"{d}/{tag}.{v}.{small}.out", f"{d}/{tag}.{v}.{large}.out")
            vals[v] = sum(c for f, c in costs.items() if not SCHED.match(f))
            narrow[v] = sum(c for f, c in costs.items() if not SCHED.match(f) and not NARROW.match(f))
        for name, vs in (("", vals), (" narrow", narrow)):
            p = vs["plain"]
            print(tag + name, " ".join(f"{v}={c:.0f}({c / p:.3f})" for v, c in vs.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
