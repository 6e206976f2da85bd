#!/usr/bin/env bash
# StreamUsage's cost per record on the server, counted in instructions (callgrind), which
# do not depend on the machine's load.
#
#   cargo build --release --bin quotad && benches/stream_callgrind.sh
#
# Runs `quotad serve` (embedded ledger, `full` journal) under valgrind's callgrind, funds
# an account, warms up with one stream of WARM reports, zeroes the counters, then sends
# one StreamUsage call of N pipelined reports (h2load: one HTTP/2 stream whose body is N
# gRPC frames, so every report is in flight at once; the server reads and charges them in
# rounds of at most 256, as under the load bench's window of 256) and waits until the embedded ledger has
# applied every record (the journal backlog is 0) before it dumps the counters. So the
# count is the whole server process per record: h2/tonic, decoding, the stream's rounds,
# the journal writer thread, the sync loop and the ledger's SQLite writes.
#
# Prints the instructions per record in total and grouped by where they go (exclusive
# cost of each function, grouped by its crate or module; the groups are in
# benches/stream_callgrind.py). The profile is left as OUT (default
# ./callgrind.stream.out) for `callgrind_annotate`.
#
# `stream_buffer` is raised far above the rounds (as the load bench raises it to its
# window): under valgrind the task that writes decisions out falls behind the stream, and
# with a buffer of one window the stream would end as if its client did not read.
#
# BIN (target/release/quotad), N (20000), WARM (2000), OUT; NOVG=1 runs it without
# valgrind and prints the server's CPU time per record instead (machine-dependent and
# noisy; with N=200000 it shows what a backlog at the ledger costs).
set -eu
BIN=${BIN:-target/release/quotad}
N=${N:-20000}
WARM=${WARM:-2000}
OUT=${OUT:-$PWD/callgrind.stream.out}
ADDR=${ADDR:-127.0.0.1:50161}
METRICS=${METRICS:-127.0.0.1:50162}
here=$(cd "$(dirname "$0")" && pwd)
command -v h2load >/dev/null || { echo "skipped: no h2load (apt-get install nghttp2-client)"; exit 0; }

dir=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

vg=(valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$dir/cg.%p")
[ "${NOVG:-0}" = 1 ] && vg=()
"${vg[@]}" "$BIN" serve --listen "$ADDR" --data-dir "$dir/data" --metrics-listen "$METRICS" \
    --stream-buffer 65536 --stream-reports-per-sec 4294967295 \
    >"$dir/serve.out" 2>"$dir/serve.log" &
pid=$!
until grep -q "listening" "$dir/serve.out" 2>/dev/null; do
    kill -0 "$pid" || { cat "$dir/serve.log"; exit 1; }
    sleep 0.5
done
ctl() { "$BIN" ctl --addr "$ADDR" --token-file "$dir/data/operator.token" "$@" >/dev/null; }
ctl create-account bench
ctl top-up bench 1000000000
token=$(cat "$dir/data/operator.token")

backlog() {
    curl -s "http://$METRICS/metrics" | sed -n 's/^quotad_journal_backlog \([0-9.e+]*\)$/\1/p'
}
drained() { # waits until the ledger applied everything journaled
    while :; do
        b=$(backlog)
        [ "${b%.*}" = 0 ] && return
        sleep 1
    done
}
decided() { # StreamUsage decisions so far
    curl -s "http://$METRICS/metrics" |
        awk '/^quotad_decisions_total\{rpc="StreamUsage"/ { n += $NF } END { print n + 0 }'
}
stream() { # job reports -> one StreamUsage call of `reports` pipelined reports
    python3 "$here/stream_callgrind.py" body bench "$1" "$2" >"$dir/body.bin"
    out=$(h2load -n 1 -c 1 -m 1 -t 1 -d "$dir/body.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        -H "authorization: Bearer $token" "http://$ADDR/quotad.v1.Quota/StreamUsage")
    echo "$out" | grep -q "requests: 1 total, 1 started, 1 done, 1 succeeded" ||
        { echo "$out"; exit 1; }
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
stream warm "$WARM"
drained
before=$(decided)
ticks=$(cpu_ticks)
started=$(date +%s.%N)
[ -n "${vg[*]}" ] && callgrind_control -z "$pid" >/dev/null
stream job "$N"
drained
[ -n "${vg[*]}" ] && callgrind_control -d stream "$pid" >/dev/null
got=$(($(decided) - before))
[ "$got" = "$N" ] || { echo "$got decisions for $N reports:"; tail -5 "$dir/serve.log"; exit 1; }
if [ -z "${vg[*]}" ]; then
    # Without valgrind: the server's CPU time (user + system, all threads) per record
    # from the stream's start until the ledger applied it all (clock ticks: coarse, so
    # use a large N).
    awk -v t="$(($(cpu_ticks) - ticks))" -v hz="$(getconf CLK_TCK)" -v n="$N" \
        -v s="$(echo "$(date +%s.%N) - $started" | bc)" \
        'BEGIN { printf "%d decisions; server CPU %.2f us per record; %.2f s to apply them all\n", n, t / hz / n * 1e6, s }'
    exit 0
fi
sleep 1
f=$(ls -t "$dir"/cg."$pid".* | head -1)
cp "$f" "$OUT"
echo "N=$N reports on one stream; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
python3 "$here/stream_callgrind.py" table "$OUT" "$N"
