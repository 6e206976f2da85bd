"""The test session's quotad: a real `quotad serve` built from this repository.

The binary is $QUOTAD_BIN if set, else target/debug/quotad after `cargo build` (when
cargo is there, so it is never stale). Each server gets a fresh data directory and a
port the kernel picks; its operator token is the one it wrote on first start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from helpers import NewAccount, Server, running_server

import quotad

REPO = Path(__file__).resolve().parents[3]


def _quotad_bin() -> Path:
    given = os.environ.get("QUOTAD_BIN")
    if given:
        return Path(given)
    target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
    if not target.is_absolute():
        target = REPO / target
    cargo = shutil.which("cargo")
    if cargo:
        subprocess.run(
            [cargo, "build", "--quiet", "--locked", "--bin", "quotad"], cwd=REPO, check=True
        )
    binary = target / "debug" / "quotad"
    if not binary.is_file():
        pytest.exit(f"no quotad binary at {binary}: set QUOTAD_BIN or install cargo", 2)
    return binary


@pytest.fixture(scope="session")
def quotad_bin() -> Path:
    return _quotad_bin()


@pytest.fixture(scope="session")
def server(quotad_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(quotad_bin, tmp_path_factory.mktemp("quotad")) as s:
        yield s


@pytest.fixture
def client(server: Server) -> Iterator[quotad.Client]:
    with quotad.Client(server.addr, server.token) as c:
        yield c


@pytest.fixture
def admin(server: Server) -> Iterator[quotad.Admin]:
    with quotad.Admin(server.addr, server.token) as a:
        yield a


@pytest.fixture
def new_account(admin: quotad.Admin) -> NewAccount:
    def make(balance: str | None = None) -> str:
        account = f"acct-{uuid.uuid4().hex[:12]}"
        admin.create_account(account, Decimal(balance) if balance is not None else None)
        return account

    return make
