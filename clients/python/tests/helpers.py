"""Helpers of the tests: a real `quotad serve` process, waiting for background effects."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import quotad

#: new_account(balance=None) -> a fresh account id, with that opening balance.
NewAccount = Callable[..., str]

#: How long a server may take to start, and to stop after SIGTERM.
SERVER_START_S = 30.0
SERVER_STOP_S = 15.0


@dataclass
class Server:
    """A running `quotad serve`."""

    addr: str
    data_dir: Path
    token: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """SIGTERM, as an operator would: quotad drains and exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(SERVER_STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(binary: Path, workdir: Path, *args: str, listen: str = "127.0.0.1:0") -> Server:
    """Starts quotad on `listen` with its data in workdir/data; waits for its
    "quotad listening on ADDR" line."""
    data = workdir / "data"
    out = workdir / f"server-{uuid.uuid4().hex[:8]}.out"
    log = out.with_suffix(".log")
    # The server reads QUOTAD_* settings too; the tests' own must not reach it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUOTAD_")}
    cmd = [str(binary), "serve", "--listen", listen, "--data-dir", str(data)]
    # Sessions and syncs step on the sync tick: a short one keeps the tests quick.
    cmd += ["--sync-interval-ms", "100", *args]
    with out.open("wb") as stdout, log.open("wb") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env)
    deadline = time.monotonic() + SERVER_START_S
    prefix = "quotad listening on "
    while True:
        lines = out.read_text().splitlines()
        addr = next((line[len(prefix) :] for line in lines if line.startswith(prefix)), None)
        if addr:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"quotad did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    token = (data / "operator.token").read_text().strip()
    return Server(addr=addr, data_dir=data, token=token, proc=proc, log=log)


@contextmanager
def running_server(binary: Path, workdir: Path, *args: str) -> Iterator[Server]:
    server = start_server(binary, workdir, *args)
    try:
        yield server
    finally:
        server.stop()


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Polls `check` until it holds: for what quotad does in the background (ledger
    syncs, session ticks). The deadline is generous; the tests assert outcomes, never
    how long they took."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout_s} s")
        time.sleep(0.05)


def statement_for(
    admin: quotad.Admin, account: str, usage_prefix: str
) -> list[quotad.StatementEntry]:
    """The statement entries of a reservation or job (id, or id/seq for reports)."""
    return [
        e
        for e in admin.statement(account).entries
        if e.usage_id == usage_prefix or e.usage_id.startswith(usage_prefix + "/")
    ]
