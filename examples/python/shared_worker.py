#!/usr/bin/env python3
"""A Shared-Edition GPU worker metered by quotad, with the `quotad` Python package.

The flow every worker follows:
1. Reserve an estimate of the job's GPU time before starting. A denial is a normal
   outcome (the account cannot pay): report it and do not start the job.
2. Meter the job on the reservation: report the GPU time used since the last report on
   every tick and stop as soon as quotad says STOP. The stream takes over the hold.
3. Leave the blocks: the stream closes (the job is settled) and the reservation is
   committed with the total reported, which returns what the job was charged.

The package retries every call with the same ids, so a lost answer is never charged twice.
The job is simulated: each tick "uses" --tick-ms of GPU time and sleeps --sleep-ms of
real time. From the repository's root:

    pip install -r examples/python/requirements.txt
    python examples/python/shared_worker.py --account acme --job job-1 --job-ms 20000
"""

from __future__ import annotations

import argparse
import sys
import time

import quotad


def run(args: argparse.Namespace) -> None:
    if min(args.estimate_ms, args.job_ms, args.tick_ms) <= 0:
        raise SystemExit("shared_worker: --estimate-ms, --job-ms and --tick-ms must be above zero")
    stop: quotad.Decision | None = None
    # Address and token: --addr / --token, else QUOTAD_ADDR / QUOTAD_TOKEN(_FILE).
    with quotad.Client(args.addr, args.token) as client:
        try:
            with client.reserve(args.account, args.sku, args.estimate_ms,
                                reservation_id=args.job) as r:
                print(f"job {args.job} admitted: held {r.held} {r.currency} "
                      f"for {args.estimate_ms} ms")
                with r.meter() as m:
                    while m.reported < args.job_ms:
                        time.sleep(args.sleep_ms / 1000)  # one tick of the job
                        d = m.report(min(args.tick_ms, args.job_ms - m.reported))
                        if d.stop:  # stop the GPU work now; what ran is charged
                            stop = d
                            print(f"seq {d.seq}: STOP ({d.reason.value if d.reason else '-'}), "
                                  f"remaining {d.remaining_quantity} ms, "
                                  f"charged {d.charged} {d.currency}")
                            break
        except quotad.Denied as e:
            # Not an error: the account cannot pay for the job now. Do not start it.
            print(f"job {args.job} not admitted: {e.reason.value} "
                  f"(available {e.available} {e.currency})")
            return
    # What Commit said it charged (after a stream that had to reconnect, there is no
    # Commit: its reports were charged as they came, and the meter's total says so).
    charged = r.committed.charged if r.committed else m.charged
    reason = stop.reason.value if stop and stop.reason else "-"
    # One line, key=value, for people and for scripts.
    print(f"summary: job={args.job} outcome={'stopped' if stop else 'finished'} "
          f"reported_ms={m.reported} charged={charged} currency={r.currency} reason={reason}")


def main() -> None:
    p = argparse.ArgumentParser(
        description="Shared-Edition GPU worker metered by quotad (simulated job)")
    p.add_argument("--addr", help="quotad's gRPC address (default: $QUOTAD_ADDR, "
                                  "else 127.0.0.1:50051)")
    p.add_argument("--account", required=True, help="account paying for the job")
    p.add_argument("--job", required=True,
                   help="job id: the reservation id and the stream's work_id (unique per job)")
    p.add_argument("--sku", default="gpu.shared.a10",
                   help="Shared-Edition sku (GPU type) the job runs on")
    p.add_argument("--estimate-ms", type=int, default=10_000,
                   help="GPU milliseconds to reserve before starting")
    p.add_argument("--job-ms", type=int, default=30_000,
                   help="GPU milliseconds the simulated job needs in total")
    p.add_argument("--tick-ms", type=int, default=1_000, help="GPU milliseconds reported per tick")
    p.add_argument("--sleep-ms", type=int, default=10,
                   help="real milliseconds each simulated tick takes")
    p.add_argument("--token", help="token of the account's owner or a granted sub-user "
                                   "(default: $QUOTAD_TOKEN, else $QUOTAD_TOKEN_FILE's)")
    try:
        run(p.parse_args())
    except quotad.Error as e:
        print(f"shared_worker: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
