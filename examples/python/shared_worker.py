#!/usr/bin/env python3
"""A Shared-Edition GPU worker metered by quotad (Python, grpcio).

The flow every worker follows:
1. Reserve an estimate of the job's GPU time before starting. A denial is a normal
   outcome (the account cannot pay): report it and do not start the job.
2. Open StreamUsage with work_id = the reservation id; the stream takes over the
   reservation's hold. Report the GPU time used since the last report on every tick and
   read one decision per report; stop the job as soon as a decision says STOP.
3. Half-close the stream and read until quotad closes it: that settles the job, its
   reservation is committed with the total reported.
4. Commit the reservation with that total: it confirms the settlement (Commit is
   idempotent) and returns what the job was charged.

The job is simulated: each tick "uses" --tick-ms of GPU time and sleeps --sleep-ms of
real time. The gRPC stubs are generated from proto/ into a temporary directory at start,
so nothing generated is kept in the repository:

    pip install -r examples/python/requirements.txt
    python examples/python/shared_worker.py --account acme --job job-1 --job-ms 20000
"""

import argparse
import atexit
import contextlib
import importlib.resources
import os
import pathlib
import queue
import shutil
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc

# proto/ of this repository; pass --proto-dir when the script is copied elsewhere.
DEFAULT_PROTO_DIR = pathlib.Path(__file__).resolve().parents[2] / "proto"


class WorkerError(Exception):
    """A failure that ends the worker with a message and a non-zero exit."""


def load_stubs(proto_dir):
    """Generates quotad_pb2 / quotad_pb2_grpc from the proto and imports them."""
    proto = pathlib.Path(proto_dir) / "quotad" / "v1" / "quotad.proto"
    if not proto.is_file():
        raise WorkerError(f"{proto} not found (pass --proto-dir: the directory holding "
                          "quotad/v1/quotad.proto)")
    out = tempfile.mkdtemp(prefix="quotad-stubs-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(proto),
    ])
    if rc != 0:
        raise WorkerError(f"protoc failed on {proto} (exit {rc})")
    sys.path.insert(0, out)
    from quotad.v1 import quotad_pb2, quotad_pb2_grpc

    return quotad_pb2, quotad_pb2_grpc


@contextlib.contextmanager
def rpc(call):
    """Turns a failed call into "Commit failed: NOT_FOUND: reservation job-1 ..."."""
    try:
        yield
    except grpc.RpcError as e:
        raise WorkerError(f"{call} failed: {e.code().name}: {e.details()}") from None


def money(m):
    return f"{m.amount} {m.currency}"


def run(args):
    if min(args.estimate_ms, args.job_ms, args.tick_ms) <= 0:
        raise WorkerError("--estimate-ms, --job-ms and --tick-ms must be above zero")
    pb, pb_grpc = load_stubs(args.proto_dir)

    # grpcio takes host:port; accept the http:// form the Rust tools use as well.
    target = args.addr.removeprefix("http://")
    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=5)
    except grpc.FutureTimeoutError:
        raise WorkerError(
            f"cannot reach quotad at {args.addr} (is `quotad serve` running?)") from None
    quota = pb_grpc.QuotaStub(channel)
    # Every call carries the account owner's (or a granted sub-user's) token.
    md = [("authorization", f"Bearer {args.token}")] if args.token else None

    # 1. Reserve the estimate. A retry with the same reservation id returns the first
    #    outcome, so it is safe to retry this call after a network error.
    with rpc("Reserve"):
        reserved = quota.Reserve(pb.ReserveRequest(
            account_id=args.account,
            reservation_id=args.job,
            resource=pb.GPU_SHARED,
            sku=args.sku,
            quantity=args.estimate_ms,
            ttl_ms=0,  # the server's default hold lifetime
        ), metadata=md)
    if not reserved.admitted:
        # Not an error: the account cannot pay for the job now. Do not start it.
        print(f"job {args.job} not admitted: {pb.DenyReason.Name(reserved.reason)} "
              f"(available {money(reserved.available)})")
        return
    print(f"job {args.job} admitted: held {money(reserved.held)} for {args.estimate_ms} ms")

    # 2. Meter the job. grpcio pulls the requests from a generator on its own thread; the
    #    generator hands over the reports put on a queue, and None ends it (half-close).
    reports = queue.Queue()

    def report_stream():
        while (report := reports.get()) is not None:
            yield report

    def report(seq, quantity):
        return pb.UsageReport(account_id=args.account, work_id=args.job,
                              resource=pb.GPU_SHARED, sku=args.sku,
                              quantity=quantity, seq=seq)

    reported, seq, stop_reason = 0, 0, None
    decisions = quota.StreamUsage(report_stream(), metadata=md)
    try:
        with rpc("StreamUsage"):
            while True:
                # Run one tick of the job, then report it and read quotad's decision.
                time.sleep(args.sleep_ms / 1000)
                seq += 1
                delta = min(args.tick_ms, args.job_ms - reported)
                reports.put(report(seq, delta))
                decision = next(decisions, None)
                if decision is None:
                    raise WorkerError(
                        f"quotad closed the usage stream before answering seq {seq}")
                if decision.seq != seq:
                    raise WorkerError(f"expected the decision for seq {seq}, "
                                      f"got one for seq {decision.seq}")
                # A duplicate or out-of-order report is ignored and charged nothing (it cannot
                # happen here: one report is in flight at a time, with increasing seq).
                if not decision.ignored:
                    reported += delta
                if decision.action == pb.STOP:
                    # Stop the GPU work now; what ran so far has been charged.
                    stop_reason = pb.DenyReason.Name(decision.reason)
                    print(f"seq {seq}: STOP ({stop_reason}), remaining "
                          f"{decision.remaining_quantity} ms, charged {money(decision.charged)}")
                    break
                if reported >= args.job_ms:
                    break  # the job is done

            # 3. Half-close (no more reports) and read until quotad closes its side: the
            #    job is then settled.
            reports.put(None)
            for _ in decisions:
                pass
    except BaseException:
        decisions.cancel()  # give up the call, and with it the job's stream
        raise
    finally:
        reports.put(None)  # never leave grpcio's request thread waiting

    # 4. Commit with the total reported: confirms the settlement and returns the charge.
    with rpc("Commit"):
        committed = quota.Commit(pb.CommitRequest(reservation_id=args.job, quantity=reported),
                                 metadata=md)

    # One line, key=value, for people and for scripts.
    outcome = "stopped" if stop_reason else "finished"
    print(f"summary: job={args.job} outcome={outcome} reported_ms={reported} "
          f"charged={committed.charged.amount} currency={committed.charged.currency} "
          f"reason={stop_reason or '-'}")
    channel.close()


def main():
    p = argparse.ArgumentParser(
        description="Shared-Edition GPU worker metered by quotad (simulated job)")
    p.add_argument("--addr", default="http://127.0.0.1:50051", help="quotad's gRPC address")
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
    p.add_argument("--token", default=os.environ.get("QUOTAD_TOKEN"),
                   help="token of the account's owner or a granted sub-user "
                        "(default: $QUOTAD_TOKEN)")
    p.add_argument("--proto-dir", default=DEFAULT_PROTO_DIR,
                   help="directory holding quotad/v1/quotad.proto (default: this repository's)")
    try:
        run(p.parse_args())
    except WorkerError as e:
        print(f"shared_worker: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
