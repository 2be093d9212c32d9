#!/usr/bin/env bash
# Runs the core tracker's benchmarks the way bench/README.md's figures were
# measured, and writes the results to bench/results/ (or $OUT).
#
#   bench/run.sh              everything (about 15 minutes on 2 cores)
#   bench/run.sh get          GET wall clock only (benchstat ratios)
#   bench/run.sh callgrind    client instructions per GET only
#   bench/run.sh tracker      Scan/Stats over 10,000 connections, B/conn
#
# Needs redis-server and go; valgrind for "callgrind"; benchstat
# (go install golang.org/x/perf/cmd/benchstat@latest) for the ratios.
# It starts its own redis-server on a free loopback port (the GET benchmarks
# use it through REDIS_ADDR; the 10,000-connection ones start private
# servers with a higher maxclients) and stops it at the end.
#
# Tunables: COUNT (GET runs, default 6), BENCHTIME (GET, default 1s),
# CG_REPEAT (callgrind repetitions, default 3), CG_SMALL/CG_LARGE (callgrind
# benchtimes, default 2000/22000), OUT (result directory).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
OUT=${OUT:-bench/results}
COUNT=${COUNT:-6}
BENCHTIME=${BENCHTIME:-1s}
CG_REPEAT=${CG_REPEAT:-3}
CG_SMALL=${CG_SMALL:-2000}
CG_LARGE=${CG_LARGE:-22000}
VARIANTS=(plain noop-recorder noop-floor instrumented instrumented-auto redisotel)

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
work=$(mktemp -d)
redis_pid=
cleanup() {
	if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

# A private redis-server on a free loopback port.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
	--dir "$work" --daemonize no --loglevel warning --logfile "$work/redis.log" &
redis_pid=$!
for _ in $(seq 100); do
	redis-cli -p "$port" ping >/dev/null 2>&1 && break
	sleep 0.1
done
export REDIS_ADDR=127.0.0.1:$port

# One binary for every measurement. CGO_ENABLED=0: a static binary runs
# cleanly under valgrind (only the resolver changes; addresses are literal).
CGO_ENABLED=0 go test -c -o "$work/redisleak.test" .
bin=$work/redisleak.test

{
	echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	if git rev-parse --git-dir >/dev/null 2>&1; then
		echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- '*.go' || echo ' (+ uncommitted changes)')"
	else
		echo "commit: ${COMMIT:-unknown}"
	fi
	echo "go: $(go version)"
	echo "redis: $(redis-server --version)"
	echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') x $(nproc)"
	echo "kernel: $(uname -r)"
	echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/machine.txt"

benchstat_bin=$(command -v benchstat || echo "$(go env GOPATH)/bin/benchstat")

run_get() {
	# Sub-benchmarks plain, noop-recorder, instrumented, redisotel run one
	# after another, on the same server, COUNT rounds. (-test.count N would
	# run each sub-benchmark N times in a row: on a shared machine a burst
	# of load would then hit one variant only.)
	: >"$OUT/get.txt"
	for i in $(seq "$COUNT"); do
		(cd "$work" && "$bin" -test.run '^$' -test.bench '^BenchmarkGET$' \
			-test.cpu 1,8 -test.benchtime "$BENCHTIME") | tee -a "$OUT/get.txt"
	done
	if [ -x "$benchstat_bin" ]; then
		"$benchstat_bin" -col /client "$OUT/get.txt" | tee "$OUT/get-benchstat.txt"
	fi
}

run_callgrind() {
	command -v valgrind >/dev/null || { echo "valgrind missing: skipping callgrind" >&2; return; }
	local cg=$work/cg ops=$((CG_LARGE - CG_SMALL))
	mkdir -p "$cg"
	: >"$OUT/callgrind-totals.txt"
	for rep in $(seq "$CG_REPEAT"); do
		for v in "${VARIANTS[@]}"; do
			for n in "$CG_SMALL" "$CG_LARGE"; do
				local f=$cg/$v.$n.$rep.out
				for try in 1 2 3; do
					# asyncpreemptoff: no SIGURG (callgrind's signal handling
					# asserts on some); rdtscp off: valgrind 3.19 cannot decode it.
					if (cd "$work" && GODEBUG=asyncpreemptoff=1,cpu.rdtscp=off valgrind --tool=callgrind \
						--callgrind-out-file="$f" "$bin" -test.run '^$' \
						-test.bench "^BenchmarkGET\$/^client=$v\$" -test.benchtime "${n}x" -test.cpu 1 \
						>"$cg/$v.$n.$rep.log" 2>&1) && grep -q '^totals:' "$f"; then
						break
					fi
					echo "callgrind run $v $n #$rep failed (try $try), see $cg/$v.$n.$rep.log" >&2
				done
				echo "$rep $v $n $(grep '^totals:' "$f" | awk '{print $2}')" | tee -a "$OUT/callgrind-totals.txt"
			done
		done
	done
	# instructions per op = (large - small) / ops, per repetition; the
	# median over repetitions; ratio to plain.
	awk -v ops="$ops" -v small="$CG_SMALL" '
		{ t[$1" "$2" "$3] = $4; reps[$1] = 1; vs[$2] = 1 }
		END {
			printf "%-14s %s   %8s  %s\n", "client", "instructions/op per repetition", "median", "vs plain"
			nv = split("plain noop-recorder noop-floor instrumented instrumented-auto redisotel", order, " ")
			for (i = 1; i <= nv; i++) {
				v = order[i]; n = 0; line = ""
				for (r in reps) {
					d = (t[r" "v" "(small+ops)] - t[r" "v" "small]) / ops
					x[++n] = d; line = line sprintf(" %8.0f", d)
				}
				asort(x); med = (n % 2) ? x[(n+1)/2] : (x[n/2] + x[n/2+1]) / 2
				m[v] = med
				printf "%-14s %s   %8.0f  %.3f\n", v, line, med, med / m["plain"]
				delete x
			}
		}' "$OUT/callgrind-totals.txt" | tee "$OUT/callgrind.txt"
	# the client path (every function but the scheduler's and the clock's,
	# which vary with timing under valgrind), per repetition
	local tags=()
	for rep in $(seq "$CG_REPEAT"); do
		for v in "${VARIANTS[@]}"; do
			for n in "$CG_SMALL" "$CG_LARGE"; do
				ln -sf "$cg/$v.$n.$rep.out" "$cg/r$rep.$v.$n.out"
			done
		done
		tags+=("r$rep")
	done
	python3 bench/cgclient.py "$ops" "$CG_SMALL" "$CG_LARGE" "$cg" "${tags[@]}" | tee "$OUT/callgrind-client-path.txt"
	# where the difference goes: self instructions per op by function,
	# instrumented vs noop-recorder (the tracker alone) and vs plain, for
	# the last repetition
	local r=$CG_REPEAT
	python3 bench/cgdiff.py "$ops" "$cg/plain.$CG_SMALL.$r.out" "$cg/plain.$CG_LARGE.$r.out" \
		"$cg/instrumented.$CG_SMALL.$r.out" "$cg/instrumented.$CG_LARGE.$r.out" --top 60 \
		>"$OUT/callgrind-diff-instrumented-vs-plain.txt"
	python3 bench/cgdiff.py "$ops" "$cg/noop-recorder.$CG_SMALL.$r.out" "$cg/noop-recorder.$CG_LARGE.$r.out" \
		"$cg/instrumented.$CG_SMALL.$r.out" "$cg/instrumented.$CG_LARGE.$r.out" --top 60 \
		>"$OUT/callgrind-diff-instrumented-vs-noop.txt"
	python3 bench/cgdiff.py "$ops" "$cg/plain.$CG_SMALL.$r.out" "$cg/plain.$CG_LARGE.$r.out" \
		"$cg/noop-recorder.$CG_SMALL.$r.out" "$cg/noop-recorder.$CG_LARGE.$r.out" --top 30 \
		>"$OUT/callgrind-diff-noop-vs-plain.txt"
	head -3 "$OUT"/callgrind-diff-*.txt
}

run_tracker() {
	(cd "$work" && "$bin" -test.run '^$' -test.bench '^BenchmarkTracker10k$' -test.count 6 -test.cpu 2) | tee "$OUT/tracker10k.txt"
	if [ -x "$benchstat_bin" ]; then
		"$benchstat_bin" "$OUT/tracker10k.txt" | tee "$OUT/tracker10k-benchstat.txt"
	fi
	(cd "$work" && "$bin" -test.run '^$' -test.bench '^BenchmarkMemoryPerConn$' -test.benchtime 1x -test.count 3 -test.cpu 2) | tee "$OUT/memory.txt"
}

case $what in
all) run_get; run_callgrind; run_tracker ;;
get) run_get ;;
callgrind) run_callgrind ;;
tracker) run_tracker ;;
*) echo "usage: $0 [all|get|callgrind|tracker]" >&2; exit 2 ;;
esac
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"
