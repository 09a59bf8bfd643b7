"""The gRPC bootstrap against a real loopback server: health, reflection, errors, request ids, metrics."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from loopback import LoopThread
from prometheus_client.parser import text_string_to_metric_families
from runtime_echo import SERVICE, EchoConfig, echo_service
from runtime_helpers import LogCapture, free_port, wait_until

from cairn.common.channel import make_channel, raise_for_rpc_error
from cairn.common.errors import CairnError, NotFound
from cairn.common.request_id import REQUEST_ID_HEADER, request_context
from cairn.common.server import RunningServer, start_server


def echo(
    channel: grpc.Channel, payload: bytes, request_id: str | None = None
) -> tuple[bytes, dict[str, str]]:
    metadata = ((REQUEST_ID_HEADER, request_id),) if request_id else None
    response, call = channel.unary_unary(f"/{SERVICE}/Echo").with_call(payload, metadata=metadata, timeout=30)
    return response, dict(call.initial_metadata())


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_health_reports_serving_for_the_server_and_each_service(echo_channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(echo_channel)
    for service in ("", SERVICE):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    err = rpc_error(lambda: stub.Check(health_pb2.HealthCheckRequest(service="cairn.test.Nope"), timeout=30))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch_streams_through_the_interceptors(echo_channel: grpc.Channel) -> None:
    # Watch streams with `context.write` from a coroutine, the other way to write a stream handler.
    watch = health_pb2_grpc.HealthStub(echo_channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


def test_reflection_lists_every_service(echo_channel: grpc.Channel) -> None:
    services = set(ProtoReflectionDescriptorDatabase(echo_channel).get_services())
    assert services == {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


def test_cairn_error_becomes_its_status_and_the_server_keeps_serving(echo_channel: grpc.Channel) -> None:
    err = rpc_error(lambda: echo(echo_channel, b"notfound"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "no such thing: notfound"
    assert echo(echo_channel, b"still here")[0] == b"still here"


def test_unexpected_exception_becomes_internal_without_leaking_details(
    echo_channel: grpc.Channel, logs: LogCapture
) -> None:
    err = rpc_error(lambda: echo(echo_channel, b"boom", request_id="boom-rid"))
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "boom-rid" in err.details()
    assert "kaboom" not in err.details()
    logged = [r for r in logs.records() if r["level"] == "ERROR" and r["request_id"] == "boom-rid"]
    assert logged and "RuntimeError: kaboom" in logged[0]["exc"]
    assert echo(echo_channel, b"after boom")[0] == b"after boom"


def test_unary_stream_yields_and_maps_errors_raised_mid_stream(echo_channel: grpc.Channel) -> None:
    count = echo_channel.unary_stream(f"/{SERVICE}/Count")
    assert list(count(b"3", timeout=30)) == [b"0", b"1", b"2"]
    received: list[bytes] = []
    err = rpc_error(lambda: received.extend(count(b"2!", timeout=30)))
    assert received == [b"0", b"1"]
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_stream_unary_maps_errors(echo_channel: grpc.Channel) -> None:
    join = echo_channel.stream_unary(f"/{SERVICE}/Join")
    assert join(iter([b"a", b"b", b"c"]), timeout=30) == b"abc"
    assert rpc_error(lambda: join(iter([b"a", b"boom"]), timeout=30)).code() == grpc.StatusCode.INTERNAL


def test_stream_stream_maps_errors_during_iteration(echo_channel: grpc.Channel) -> None:
    chat = echo_channel.stream_stream(f"/{SERVICE}/Chat")
    assert list(chat(iter([b"x", b"y"]), timeout=30)) == [b"x", b"y"]
    received: list[bytes] = []
    err = rpc_error(lambda: received.extend(chat(iter([b"x", b"notfound", b"z"]), timeout=30)))
    assert received == [b"x"]
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_request_id_from_metadata_is_echoed_and_logged(echo_channel: grpc.Channel, logs: LogCapture) -> None:
    response, headers = echo(echo_channel, b"hello", request_id="req-42")
    assert response == b"hello"
    assert headers[REQUEST_ID_HEADER] == "req-42"
    lines = [r for r in logs.records() if r["msg"] == "echo" and r["request_id"] == "req-42"]
    assert lines == [lines[0]]
    assert lines[0]["service"] == "echo"
    assert lines[0]["logger"] == "cairn.test.echo"
    assert lines[0]["size"] == 5


@pytest.mark.parametrize("sent", [None, "has spaces", "x" * 500])
def test_missing_or_unsafe_request_id_is_replaced(echo_channel: grpc.Channel, sent: str | None) -> None:
    _, headers = echo(echo_channel, b"hi", request_id=sent)
    rid = headers[REQUEST_ID_HEADER]
    assert rid != sent
    assert len(rid) == 32 and int(rid, 16) >= 0


def test_sync_channel_forwards_the_bound_request_id(echo_channel: grpc.Channel) -> None:
    with request_context("bound-rid"):
        _, headers = echo(echo_channel, b"hi")
    assert headers[REQUEST_ID_HEADER] == "bound-rid"
    with request_context("bound-rid"):
        _, headers = echo(echo_channel, b"hi", request_id="explicit-rid")
    assert headers[REQUEST_ID_HEADER] == "explicit-rid"


def test_request_id_flows_through_a_downstream_call(
    echo_server: RunningServer, echo_channel: grpc.Channel, logs: LogCapture
) -> None:
    response, _ = echo(echo_channel, f"forward:127.0.0.1:{echo_server.port}".encode(), request_id="chain-7")
    assert response == b"forwarded"
    sizes = sorted(r["size"] for r in logs.records() if r["msg"] == "echo" and r["request_id"] == "chain-7")
    assert sizes == [len(b"forwarded"), len(f"forward:127.0.0.1:{echo_server.port}")]


@pytest.mark.parametrize("shape", ["unary_unary", "unary_stream", "stream_unary", "stream_stream"])
def test_aio_channel_forwards_the_bound_request_id_for_every_call_shape(
    echo_server: RunningServer, loop_thread: LoopThread, shape: str
) -> None:
    method = {
        "unary_unary": "Echo",
        "unary_stream": "Count",
        "stream_unary": "Join",
        "stream_stream": "Chat",
    }[shape]
    request = b"1" if shape.startswith("unary") else iter([b"1"])

    async def call() -> str:
        async with make_channel(f"127.0.0.1:{echo_server.port}") as channel:
            with request_context("aio-rid"):
                rpc = getattr(channel, shape)(f"/{SERVICE}/{method}")(request)
                if shape.endswith("stream"):
                    assert [r async for r in rpc] == [b"0" if method == "Count" else b"1"]
                else:
                    assert await rpc == b"1"
                return dict(await rpc.initial_metadata())[REQUEST_ID_HEADER]

    assert loop_thread.run(call()) == "aio-rid"


def test_raise_for_rpc_error_rebuilds_the_typed_error(echo_channel: grpc.Channel) -> None:
    err = rpc_error(lambda: echo(echo_channel, b"notfound"))
    with pytest.raises(NotFound, match="no such thing") as typed:
        raise_for_rpc_error(err)
    assert typed.value.__cause__ is err

    unknown = rpc_error(lambda: echo_channel.unary_unary(f"/{SERVICE}/Missing")(b"", timeout=30))
    with pytest.raises(CairnError) as typed_unknown:
        raise_for_rpc_error(unknown)
    assert typed_unknown.value.code == grpc.StatusCode.UNIMPLEMENTED


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_endpoint_counts_calls_latency_and_errors(
    echo_server: RunningServer, echo_channel: grpc.Channel
) -> None:
    assert echo_server.metrics_port is not None
    requests = "cairn_grpc_requests_total"
    ok = (("code", "OK"), ("method", "Echo"), ("service", SERVICE))
    not_found = (("code", "NOT_FOUND"), ("method", "Echo"), ("service", SERVICE))
    stream_ok = (("code", "OK"), ("method", "Count"), ("service", SERVICE))
    latency = ("cairn_grpc_request_duration_seconds_count", (("method", "Echo"), ("service", SERVICE)))
    before = scrape(echo_server.metrics_port)

    for _ in range(3):
        echo(echo_channel, b"m")
    rpc_error(lambda: echo(echo_channel, b"notfound"))
    list(echo_channel.unary_stream(f"/{SERVICE}/Count")(b"2", timeout=30))
    after = scrape(echo_server.metrics_port)

    def delta(key: tuple[str, tuple[tuple[str, str], ...]]) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta((requests, ok)) == 3
    assert delta((requests, not_found)) == 1
    assert delta((requests, stream_ok)) == 1
    assert delta(("cairn_grpc_errors_total", not_found)) == 1
    assert delta(("cairn_grpc_errors_total", ok)) == 0
    assert delta(latency) == 4
    bucket = (
        "cairn_grpc_request_duration_seconds_bucket",
        (("le", "+Inf"), ("method", "Echo"), ("service", SERVICE)),
    )
    assert delta(bucket) == 4


def test_metrics_server_routes(echo_server: RunningServer) -> None:
    base = f"http://127.0.0.1:{echo_server.metrics_port}"
    assert urllib.request.urlopen(f"{base}/healthz", timeout=30).read() == b"ok\n"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{base}/nope", timeout=30)
    assert info.value.code == 404


def test_binding_a_taken_port_fails_clearly(echo_server: RunningServer, loop_thread: LoopThread) -> None:
    with pytest.raises(OSError, match=f"127.0.0.1:{echo_server.port}"):
        loop_thread.run(start_server(EchoConfig(port=echo_server.port), [echo_service()]))


def test_failed_start_releases_the_grpc_port(echo_server: RunningServer, loop_thread: LoopThread) -> None:
    port = free_port()
    taken_metrics = EchoConfig(port=port, metrics_port=echo_server.metrics_port)
    with pytest.raises(OSError, match="metrics server"):
        loop_thread.run(start_server(taken_metrics, [echo_service()]))
    running = loop_thread.run(start_server(EchoConfig(port=port), [echo_service()]))
    assert running.port == port
    loop_thread.run(running.stop(0))


def test_stop_drains_in_flight_calls_and_reports_not_serving(
    loop_thread: LoopThread, logs: LogCapture, tmp_path: Path
) -> None:
    metrics_port = free_port()
    running = loop_thread.run(start_server(EchoConfig(metrics_port=metrics_port), [echo_service()]))
    release = tmp_path / "release"
    with make_channel(f"127.0.0.1:{running.port}", aio=False) as channel:
        slow = channel.unary_unary(f"/{SERVICE}/Echo").future(f"wait:{release}".encode(), timeout=60)
        wait_until(lambda: any(r.get("path") == str(release) for r in logs.records()))
        stopping = asyncio.run_coroutine_threadsafe(running.stop(60), loop_thread.loop)
        with pytest.raises(urllib.error.HTTPError) as info:
            wait_until(lambda: not running.serving)
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=30)
        assert info.value.code == 503
        assert not stopping.done()
        release.touch()
        assert slow.result(timeout=60) == b"released"
        stopping.result(timeout=60)


def test_stop_cancels_calls_still_running_after_the_grace(
    loop_thread: LoopThread, logs: LogCapture, tmp_path: Path
) -> None:
    running = loop_thread.run(start_server(EchoConfig(), [echo_service()]))
    never = tmp_path / "never"
    with make_channel(f"127.0.0.1:{running.port}", aio=False) as channel:
        stuck = channel.unary_unary(f"/{SERVICE}/Echo").future(f"wait:{never}".encode(), timeout=60)
        wait_until(lambda: any(r.get("path") == str(never) for r in logs.records()))
        loop_thread.run(running.stop(0.05))
        assert stuck.exception(timeout=60).code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
