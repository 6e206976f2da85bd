"""TLS: a quotad serving TLS with a certificate made here, reached with tls_ca_file."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Server, running_server

import quotad

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def tls_server(quotad_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("tls")
    openssl = shutil.which("openssl")
    assert openssl is not None
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=quotad-test",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    tls_args = ("--tls-cert-file", str(d / "cert.pem"), "--tls-key-file", str(d / "key.pem"))
    with running_server(quotad_bin, d, *tls_args) as s:
        yield s


def test_tls_with_a_ca_file(tls_server: Server) -> None:
    ca = tls_server.data_dir.parent / "cert.pem"
    with quotad.Admin(tls_server.addr, tls_server.token, tls_ca_file=ca) as admin:
        assert admin.create_account("tls-acct", 2).balance == 2
    with quotad.Client(f"https://{tls_server.addr}", tls_server.token, tls_ca_file=ca) as c:
        assert c.balance("tls-acct").balance == 2


def test_tls_refuses_what_it_cannot_verify(tls_server: Server) -> None:
    # The system's roots do not know this certificate; plaintext is no TLS at all.
    for client in (
        quotad.Client(f"https://{tls_server.addr}", tls_server.token, retry=quotad.NO_RETRY),
        quotad.Client(tls_server.addr, tls_server.token, retry=quotad.NO_RETRY),
    ):
        with client, pytest.raises(quotad.Unavailable):
            client.balance("tls-acct")
