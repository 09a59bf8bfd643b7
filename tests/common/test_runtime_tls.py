"""TLS and mutual TLS round trips with certificates made by the openssl CLI for this test run."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from loopback import LoopThread
from runtime_echo import SERVICE, EchoConfig, echo_service

from cairn.common.channel import make_channel
from cairn.common.server import RunningServer, start_server

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip


def _issue(directory: Path, name: str, extensions: str) -> None:
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=directory,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    _make_ca(directory, "ca")
    _make_ca(directory, "rogue")
    _issue(directory, "server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _issue(directory, "client", "extendedKeyUsage=clientAuth\n")
    return Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        rogue_ca=directory / "rogue.pem",
    )


@pytest.fixture(scope="module")
def tls_server(pki: Pki, loop_thread: LoopThread) -> Iterator[RunningServer]:
    config = EchoConfig(tls_cert=pki.server_cert, tls_key=pki.server_key)
    running = loop_thread.run(start_server(config, [echo_service()]))
    yield running
    loop_thread.run(running.stop(0))


@pytest.fixture(scope="module")
def mtls_server(pki: Pki, loop_thread: LoopThread) -> Iterator[RunningServer]:
    config = EchoConfig(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca)
    running = loop_thread.run(start_server(config, [echo_service()]))
    yield running
    loop_thread.run(running.stop(0))


def call_echo(channel: grpc.Channel) -> bytes:
    return channel.unary_unary(f"/{SERVICE}/Echo")(b"secret", timeout=10)


def test_tls_round_trip_with_the_ca(tls_server: RunningServer, pki: Pki) -> None:
    with make_channel(f"127.0.0.1:{tls_server.port}", tls_ca=pki.ca, aio=False) as channel:
        assert call_echo(channel) == b"secret"
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("client", ["plaintext", "untrusted_ca"])
def test_tls_server_rejects_clients_that_cannot_verify_it(
    tls_server: RunningServer, pki: Pki, client: str
) -> None:
    ca = pki.rogue_ca if client == "untrusted_ca" else None
    channel = make_channel(f"127.0.0.1:{tls_server.port}", tls_ca=ca, aio=False)
    with channel, pytest.raises(grpc.RpcError) as info:
        call_echo(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_accepts_a_client_certificate(mtls_server: RunningServer, pki: Pki) -> None:
    target = f"127.0.0.1:{mtls_server.port}"
    with make_channel(
        target, tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key, aio=False
    ) as ch:
        assert call_echo(ch) == b"secret"


def test_mutual_tls_with_an_aio_channel(
    mtls_server: RunningServer, pki: Pki, loop_thread: LoopThread
) -> None:
    async def call() -> bytes:
        target = f"127.0.0.1:{mtls_server.port}"
        async with make_channel(
            target, tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key
        ) as ch:
            return await ch.unary_unary(f"/{SERVICE}/Echo")(b"aio secret", timeout=10)

    assert loop_thread.run(call()) == b"aio secret"


def test_mutual_tls_rejects_a_client_without_certificate(mtls_server: RunningServer, pki: Pki) -> None:
    channel = make_channel(f"127.0.0.1:{mtls_server.port}", tls_ca=pki.ca, aio=False)
    with channel, pytest.raises(grpc.RpcError) as info:
        call_echo(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_certificate_needs_key_and_ca(pki: Pki) -> None:
    with pytest.raises(ValueError, match="together"):
        make_channel("127.0.0.1:1", tls_ca=pki.ca, tls_cert=pki.client_cert, aio=False)
    with pytest.raises(ValueError, match="tls_ca"):
        make_channel("127.0.0.1:1", tls_cert=pki.client_cert, tls_key=pki.client_key, aio=False)
