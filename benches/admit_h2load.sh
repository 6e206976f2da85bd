#!/bin/sh
# Admit's fixed cost as h2load (Debian's nghttp2-client) sees it against the release
# binary: `quotad serve` (authentication on; the operator's token) answering
# quotad.v1.Quota/Admit, and the same server's grpc.health.v1.Health/Check, alternating
# ROUNDS times with identical h2load settings. The comparison with a no-op tonic handler
# of the same messages is `cargo bench --bench admit_h2load` (in-process).
#
#   cargo build --release && benches/admit_h2load.sh
#
# Settings (environment): BIN (target/release/quotad), ADDR (127.0.0.1:50151), N (60000),
# C (4), M (16), T (1), ROUNDS (3). PERF=1 records the server's CPU profile during the
# Admit runs with `perf record -g` (perf.data in the current directory).
#
# CALLGRIND=1 runs the server under valgrind's callgrind instead (N defaults to 5000,
# ROUNDS to 1) and reports the instructions the whole server process executed per Admit
# and per Check: a count that does not depend on the machine's load. The profiles are
# left in the current directory (callgrind.out.PID.N, first Admit then Check of each
# round) for `callgrind_annotate`.
set -eu
BIN=${BIN:-target/release/quotad}
ADDR=${ADDR:-127.0.0.1:50151}
CG=${CALLGRIND:-0}
if [ "$CG" = 1 ]; then N=${N:-5000} ROUNDS=${ROUNDS:-1}; fi
N=${N:-60000} C=${C:-4} M=${M:-16} T=${T:-1} ROUNDS=${ROUNDS:-3}
command -v h2load >/dev/null || { echo "skipped: no h2load (apt-get install nghttp2-client)"; exit 0; }

dir=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
METRICS=${METRICS:-127.0.0.1:50152}
VG=
[ "$CG" = 1 ] && VG="valgrind --tool=callgrind --dump-instr=no"
$VG "$BIN" serve --listen "$ADDR" --data-dir "$dir/data" --metrics-listen "$METRICS" >"$dir/serve.out" 2>"$dir/serve.log" &
pid=$!
until grep -q "listening" "$dir/serve.out" 2>/dev/null; do
    kill -0 "$pid" || { cat "$dir/serve.log"; exit 1; }
    sleep 0.2
done
ctl() { "$BIN" ctl --addr "$ADDR" --token-file "$dir/data/operator.token" "$@" >/dev/null; }
ctl create-account bench
ctl top-up bench 1000000000
token=$(cat "$dir/data/operator.token")

# gRPC frames: AdmitRequest{account_id "bench", resource GPU_SHARED, sku "gpu.shared.a10",
# quantity 1000} (28 bytes), and an empty HealthCheckRequest.
printf '\000\000\000\000\034\012\005bench\020\001\032\016gpu.shared.a10\040\350\007' >"$dir/admit.bin"
printf '\000\000\000\000\000' >"$dir/check.bin"

run() { # name path body -> prints "name req/s"
    out=$(h2load -n "$N" -c "$C" -m "$M" -t "$T" -d "$3" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        -H "authorization: Bearer $token" "http://$ADDR$2")
    echo "$out" | grep -q "requests: $N total, $N started, $N done, $N succeeded" ||
        { echo "$out"; exit 1; }
    echo "$1 $(echo "$out" | sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p')"
}

echo "h2load -n $N -c $C -m $M -t $T, $ROUNDS rounds, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
i=0
while [ "$i" -lt "$ROUNDS" ]; do
    if [ "$CG" = 1 ]; then
        for t in admit health; do
            callgrind_control -z "$pid" >/dev/null
            if [ $t = admit ]; then
                run admit /quotad.v1.Quota/Admit "$dir/admit.bin" >/dev/null
            else
                run health /grpc.health.v1.Health/Check "$dir/check.bin" >/dev/null
            fi
            callgrind_control -d "$t" "$pid" >/dev/null
            sleep 1
            f=$(ls -t callgrind.out."$pid".* | head -1)
            ir=$(sed -n 's/^totals: \([0-9]*\).*/\1/p' "$f")
            echo "$t $((ir / N)) instructions per call ($f)"
        done
        i=$((i + 1))
        continue
    fi
    if [ "${PERF:-0}" = 1 ]; then
        perf record -g -q -o perf.data -p "$pid" 2>/dev/null &
        perf_pid=$!
        sleep 0.5
        run admit /quotad.v1.Quota/Admit "$dir/admit.bin"
        kill -INT "$perf_pid"; wait "$perf_pid" || true
    else
        run admit /quotad.v1.Quota/Admit "$dir/admit.bin"
    fi
    run health /grpc.health.v1.Health/Check "$dir/check.bin"
    i=$((i + 1))
done | tee "$dir/runs"
[ "$CG" = 1 ] && exit 0
median() { grep "^$1 " "$dir/runs" | cut -d' ' -f2 | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
a=$(median admit) h=$(median health)
echo "median admit $a req/s, health $h req/s, admit/health $(echo "$a $h" | awk '{printf "%.2f", $1/$2}')"
# Every Admit was answered OK (h2load counts any HTTP 200): quotad's own count.
ok=$(curl -s "http://$METRICS/metrics" | sed -n 's/^quotad_rpc_duration_seconds_count{rpc="\/quotad.v1.Quota\/Admit",code="OK"} //p')
[ "$ok" = $((N * ROUNDS)) ] || { echo "Admit answered OK $ok times, not $((N * ROUNDS))"; exit 1; }
