#!/usr/bin/env bash
# Runs the Shared-Edition worker examples (Rust and Python) against a fresh local quotad and
# checks what they print and what quotad charged, so the examples keep working.
#
# Per language: an account rich enough for the whole job (it must finish), one that can pay
# for about 5 s of it (it must be stopped) and one with nothing (it must not be admitted).
# Needs cargo and python3 (3.9 or later); the venv is kept in the target directory.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
quotad="$target/debug/quotad"
rust_worker="$target/debug/examples/shared_worker"
venv="$target/examples-venv"

# The job: 20 s of GPU time on gpu.shared.a10 (0.0006 CNY per second in the default
# catalog), reported 1 s at a time; 2 s are reserved before it starts.
sku="gpu.shared.a10"
job_args=(--sku "$sku" --estimate-ms 2000 --job-ms 20000 --tick-ms 1000 --sleep-ms 10)
job_ms=20000
rich_balance="1"     # about 1,666 s
poor_balance="0.003" # 5 s

step() { printf -- '-- %s\n' "$*"; }
fail() {
    echo "examples/run.sh: FAILED: $*" >&2
    exit 1
}

work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

step "build quotad and the Rust example"
cargo build --locked --bin quotad --example shared_worker || fail "cargo build failed"

step "start quotad"
mkdir -p "$work/data"
"$quotad" serve --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
addr=""
for _ in $(seq 1 100); do
    addr="$(sed -n 's/^quotad listening on //p' "$work/server.out")"
    [ -n "$addr" ] && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
        cat "$work/server.log" >&2
        fail "quotad exited at start (its log is above)"
    fi
    sleep 0.1
done
[ -n "$addr" ] || fail "quotad printed no 'quotad listening on ADDR' line within 10 s"
echo "quotad listening on $addr"

# quotad ctl as the operator (the token quotad wrote on first start), quiet unless it fails.
ctl() {
    "$quotad" ctl --addr "$addr" --token-file "$work/data/operator.token" "$@" >"$work/ctl.out" 2>&1 || {
        cat "$work/ctl.out" >&2
        fail "quotad ctl $* failed"
    }
}

# account BALANCE: a new account topped up with BALANCE (none when empty).
account() {
    ctl create-account "$1"
    if [ -n "$2" ]; then
        ctl top-up "$1" "$2" --id "topup-$1"
    fi
}

# The value of KEY in the worker's "summary: key=value ..." line.
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }

# expect OUTCOME ACCOUNT JOB WORKER...: runs the worker for JOB on ACCOUNT and checks it
# finished, was stopped or was not admitted, and that quotad charged what it reported.
expect() {
    local want="$1" account="$2" job="$3" out summary
    shift 3
    # The worker runs as the account's owner, with a token made for it.
    ctl create-token owner "$account"
    local token
    token="$(sed -n 's/.*\(qdt_[0-9a-f]*\).*/\1/p' "$work/ctl.out")"
    [ -n "$token" ] || fail "$job: no token in 'quotad ctl create-token owner $account'"
    if ! out="$(QUOTAD_TOKEN="$token" "$@" --addr "http://$addr" --account "$account" --job "$job" "${job_args[@]}" 2>&1)"; then
        printf '%s\n' "$out" >&2
        fail "$job: the worker exited with an error (output above)"
    fi
    printf '%s\n' "$out" | sed 's/^/    /'

    if [ "$want" = "denied" ]; then
        grep -q "^job $job not admitted: " <<<"$out" || fail "$job: expected 'job $job not admitted'"
        return
    fi
    summary="$(grep '^summary: ' <<<"$out")" || fail "$job: the worker printed no summary line"
    local outcome reported charged reason
    outcome="$(field "$summary" outcome)"
    reported="$(field "$summary" reported_ms)"
    charged="$(field "$summary" charged)"
    reason="$(field "$summary" reason)"
    [ "$outcome" = "$want" ] || fail "$job: expected outcome=$want, got outcome=$outcome"
    if [ "$want" = "finished" ]; then
        [ "$reported" = "$job_ms" ] || fail "$job: finished but reported $reported ms, not $job_ms"
    else
        [ "$reason" != "-" ] || fail "$job: stopped without a reason"
        if [ "$reported" -le 0 ] || [ "$reported" -ge "$job_ms" ]; then
            fail "$job: stopped after $reported ms, expected between 0 and $job_ms"
        fi
    fi
    awk -v c="$charged" 'BEGIN { exit !(c > 0) }' || fail "$job: charged $charged, expected above zero"

    # The ledger records the job's charges (as JOB or JOB/SEQ) once the sidecar has synced
    # (about every second): their quantities must add up to what the worker reported, and
    # their costs to what Commit said it charged.
    local totals=""
    for _ in $(seq 1 50); do
        ctl statement "$account"
        # Columns: AT (date time), USAGE, RESOURCE, SKU, QUANTITY, COST (amount currency), ...
        totals="$(awk -v job="$job" '
            { for (i = 1; i <= NF; i++) if ($i == job || index($i, job "/") == 1) {
                  q += $(i + 3); c += $(i + 4); n++; break } }
            END { printf "%d %d %.8f", n, q, c }' "$work/ctl.out")"
        [ "${totals%% *}" -gt 0 ] && [ "$(cut -d' ' -f2 <<<"$totals")" = "$reported" ] && break
        sleep 0.2
    done
    read -r entries quantity cost <<<"$totals"
    [ "$entries" -gt 0 ] || {
        cat "$work/ctl.out" >&2
        fail "$job: no charges for the job in 'quotad ctl statement $account' (above)"
    }
    [ "$quantity" = "$reported" ] || {
        cat "$work/ctl.out" >&2
        fail "$job: the statement charges $quantity ms for the job, the worker reported $reported ms"
    }
    awk -v a="$cost" -v b="$charged" 'BEGIN { d = a - b; exit !(d < 1e-9 && d > -1e-9) }' || {
        cat "$work/ctl.out" >&2
        fail "$job: the statement's costs add up to $cost, Commit charged $charged"
    }
    echo "    ok: $outcome; the statement has $entries entries for $job: $quantity ms, $charged"
}

for lang in rust python; do
    account "rich-$lang" "$rich_balance"
    account "poor-$lang" "$poor_balance"
    account "broke-$lang" ""
done

step "Rust example"
expect finished rich-rust job-rust-rich "$rust_worker"
expect stopped poor-rust job-rust-poor "$rust_worker"
expect denied broke-rust job-rust-broke "$rust_worker"

step "Python venv ($venv)"
command -v python3 >/dev/null || fail "python3 is not installed"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || fail "cannot create a venv in $venv (is python3-venv installed?)"
fi
# The requirements name ./clients/python: the quotad package as it is in this tree.
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps ./clients/python ||
    fail "pip install ./clients/python failed"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r examples/python/requirements.txt ||
    fail "pip install -r examples/python/requirements.txt failed"

step "Python example"
py_worker=("$venv/bin/python" examples/python/shared_worker.py)
expect finished rich-python job-python-rich "${py_worker[@]}"
expect stopped poor-python job-python-poor "${py_worker[@]}"
expect denied broke-python job-python-broke "${py_worker[@]}"

step "examples: all passed"
