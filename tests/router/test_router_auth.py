"""API keys and per-key rate limits: the core rules, then both APIs of a router that enforces them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx2 as httpx
import pytest
from loopback import LoopThread
from router_harness import Router, start_router

from cairn.common.errors import Unauthenticated
from cairn.services.router.admission import RetryLater
from cairn.services.router.auth import ANONYMOUS, ApiKeys, Principal, parse_keys_file
from cairn.services.router.rate_limit import RateLimiter
from cairn.v1 import inference_pb2

KEYS = """
# team keys
sk-alpha  name=alpha  rpm=120
sk-beta   name=beta

sk-slow   name=slow   rpm=2
"""


def test_keys_file_names_keys_and_their_rates(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(KEYS)
    keys = ApiKeys.load(path, ["sk-inline"])
    assert keys.enabled
    assert keys.authenticate("Bearer sk-alpha") == Principal("alpha", 120.0)
    assert keys.authenticate("bearer  sk-beta ") == Principal("beta", None)
    assert keys.authenticate("Bearer sk-inline").name == "key-0"
    for header, message in [
        (None, "missing API key"),
        ("", "missing API key"),
        ("Basic c2stYWxwaGE=", "malformed"),
        ("Bearer", "malformed"),
        ("Bearer sk-gamma", "invalid API key"),
    ]:
        with pytest.raises(Unauthenticated, match=message):
            keys.authenticate(header)


@pytest.mark.parametrize(
    ("line", "message"), [("sk-x rpm=fast", "rpm must be a number"), ("sk-x color=red", "unknown")]
)
def test_bad_keys_files_name_the_line(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"keys:2: {message}"):
        parse_keys_file(f"# header\n{line}\n", "keys")


def test_without_keys_everyone_is_anonymous() -> None:
    assert ApiKeys.load().authenticate(None) == Principal(ANONYMOUS)


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(rpm=60, burst=3, clock=lambda: now[0])
    alice, bob = Principal("alice"), Principal("bob")
    for _ in range(3):
        limiter.check(alice)
    with pytest.raises(RetryLater) as refused:
        limiter.check(alice)
    assert refused.value.retry_after_s == pytest.approx(1.0) and refused.value.retry_after_header == "1"
    limiter.check(bob)
    now[0] = 1.0
    limiter.check(alice)
    with pytest.raises(RetryLater):
        limiter.check(alice)
    # A key's own rate replaces the router-wide one; 0 means unlimited.
    for _ in range(100):
        limiter.check(Principal("free", rpm=0))


@pytest.fixture(scope="module")
def guarded(
    loop: LoopThread, backends: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Router]:
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(KEYS)
    served = start_router(loop, **backends, api_keys_file=keys, rate_limit_rpm=600)
    yield served
    served.stop()


def test_http_refuses_missing_and_bad_keys(guarded: Router) -> None:
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
    with httpx.Client(base_url=guarded.http_url, timeout=60) as http:
        for headers in [{}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "Token sk-alpha"}]:
            response = http.post("/v1/completions", json=body, headers=headers)
            assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
            assert response.json()["error"]["code"] == "invalid_api_key"
        assert http.get("/v1/models").status_code == 401
        ok = http.post("/v1/completions", json=body, headers={"Authorization": "Bearer sk-alpha"})
        assert ok.status_code == 200 and ok.json()["choices"][0]["text"]
        # Health and metrics stay open for probes and scrapers.
        assert http.get("/health").status_code == 200 and http.get("/metrics").status_code == 200


def test_grpc_refuses_missing_and_bad_keys(guarded: Router) -> None:
    with grpc.insecure_channel(guarded.address) as channel:
        stub = guarded.stub(channel)
        request = inference_pb2.ListServedModelsRequest()
        for metadata in [(), (("authorization", "Bearer sk-wrong"),)]:
            with pytest.raises(grpc.RpcError) as error:
                stub.ListModels(request, metadata=metadata)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        models = stub.ListModels(request, metadata=(("authorization", "Bearer sk-beta"),))
        assert {m.id for m in models.models} == {"tiny", "tiny-short"}


def test_a_key_over_its_rate_gets_429_and_retry_after_and_others_do_not(guarded: Router) -> None:
    slow = {"Authorization": "Bearer sk-slow"}
    with httpx.Client(base_url=guarded.http_url, timeout=60) as http:
        assert http.get("/v1/models", headers=slow).status_code == 200
        assert http.get("/v1/models", headers=slow).status_code == 200
        refused = http.get("/v1/models", headers=slow)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert http.get("/v1/models", headers={"Authorization": "Bearer sk-beta"}).status_code == 200
    with grpc.insecure_channel(guarded.address) as channel, pytest.raises(grpc.RpcError) as error:
        guarded.stub(channel).ListModels(
            inference_pb2.ListServedModelsRequest(), metadata=(("authorization", "Bearer sk-slow"),)
        )
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert int(dict(error.value.trailing_metadata())["retry-after"]) >= 1
