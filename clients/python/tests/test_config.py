"""Where a client connects and what it sends: arguments, environment, defaults; and the
client's enums against the proto."""

from __future__ import annotations

import enum
from pathlib import Path

import pytest
from helpers import Server

import quotad
from quotad.v1 import quotad_pb2 as pb

ENUMS: list[tuple[type[enum.Enum], object]] = [
    (quotad.Resource, pb.Resource),
    (quotad.DenyReason, pb.DenyReason),
    (quotad.AccountStatus, pb.Balance.AccountStatus),
    (quotad.GrantKind, pb.Grant.Kind),
    (quotad.GrantState, pb.Grant.State),
    (quotad.EventKind, pb.AccountEvent.Kind),
    (quotad.SessionStop, pb.SessionStop),
    (quotad.SkuKind, pb.Sku.Kind),
    (quotad.PrincipalKind, pb.Principal.Kind),
]


@pytest.mark.parametrize(("ours", "wire"), ENUMS)
def test_enums_name_every_proto_value(ours: type[enum.Enum], wire: object) -> None:
    # A value the proto gains must be named in quotad/models.py too (else it reads as
    # UNSPECIFIED); tools/stubs.sh --check catches the generated code, this the enums.
    names = set(wire.keys())  # type: ignore[attr-defined]
    assert {m.value for m in ours} == names, f"name {names - {m.value for m in ours}} in models.py"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in ("QUOTAD_ADDR", "QUOTAD_TOKEN", "QUOTAD_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_addresses(clean_env: Path) -> None:
    assert quotad.Client().target == "127.0.0.1:50051"
    assert quotad.Client("http://10.0.0.1:7000/").target == "10.0.0.1:7000"
    tls = quotad.Client("https://quotad.example:443")
    assert (tls.target, tls.settings.credentials is not None) == ("quotad.example:443", True)
    assert quotad.Client("h:1").settings.credentials is None
    with pytest.raises(ValueError, match="use host:port"):
        quotad.Client("ftp://h:1")
    with pytest.raises(ValueError, match="contradicts"):
        quotad.Client("https://h:1", tls=False)
    with pytest.raises(ValueError, match="https"):
        quotad.Client("http://h:1", tls=True)
    with pytest.raises(ValueError, match="together"):
        quotad.Client("h:1", tls_cert_file="c.pem")


def test_token_sources_in_order(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert quotad.Client().settings.token is None
    assert quotad.Client().settings.metadata == ()
    (clean_env / "quotad-data").mkdir()
    (clean_env / "quotad-data" / "operator.token").write_text("qdt_default\n")
    assert quotad.Client().settings.token == "qdt_default"
    (clean_env / "env.token").write_text("qdt_file")
    monkeypatch.setenv("QUOTAD_TOKEN_FILE", str(clean_env / "env.token"))
    assert quotad.Client().settings.token == "qdt_file"
    monkeypatch.setenv("QUOTAD_TOKEN", "qdt_env")
    assert quotad.Client().settings.token == "qdt_env"
    assert quotad.Client(
        token_file=clean_env / "quotad-data" / "operator.token"
    ).settings.token == ("qdt_default")
    c = quotad.Client(token="qdt_arg")
    assert c.settings.metadata == (("authorization", "Bearer qdt_arg"),)
    assert quotad.Client(token="").settings.metadata == ()
    with pytest.raises(quotad.Error, match=r"missing\.token"):
        quotad.Client(token_file=clean_env / "missing.token")
    (clean_env / "empty.token").write_text("\n")
    with pytest.raises(quotad.Error, match="empty"):
        quotad.Client(token_file=clean_env / "empty.token")


def test_the_environment_reaches_a_server(
    server: Server, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUOTAD_ADDR", server.addr)
    monkeypatch.setenv("QUOTAD_TOKEN_FILE", str(server.data_dir / "operator.token"))
    with quotad.Admin() as admin, quotad.Client() as client:
        admin.create_account("env-acct", 1)
        assert client.balance("env-acct").balance == 1
    # ./quotad-data/operator.token, where `quotad serve` writes it by default.
    monkeypatch.delenv("QUOTAD_TOKEN_FILE")
    (clean_env / "quotad-data").mkdir()
    (clean_env / "quotad-data" / "operator.token").write_text(server.token)
    with quotad.Client() as client:
        assert client.balance("env-acct").account_id == "env-acct"
