"""README command 1's core: `cairn up` brings up the registry holding the tiny model and a
scheduler serving it from the registry on a local Ray worker."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from cairn_up import cairn_up

from cairn.cli import main
from cairn.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc


def _check_scheduler(address: str) -> None:
    """The scheduler serves the tiny model: GetInfo describes it and a request streams tokens."""
    with grpc.insecure_channel(address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        info = stub.GetInfo(scheduler_pb2.SchedulerInfoRequest())
        assert (info.deployment, info.vocab_size, info.max_model_len) == ("tiny-llama", 2048, 2048)
        request = scheduler_pb2.ScheduleRequest(
            prompt_token_ids=[5, 6, 7],
            sampling=common_pb2.SamplingParams(temperature=0.0),
            stop=common_pb2.StopCriteria(max_tokens=4, ignore_eos=True),
        )
        responses = list(stub.Generate(request))
        assert responses[-1].usage.completion_tokens == 4


def test_up_serves_the_tiny_model_and_stops_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with cairn_up(tmp_path) as (addresses, _):
        address = addresses["registry"]
        _check_scheduler(addresses["scheduler"])
        capsys.readouterr()
        assert main(["registry", "ls", "--registry", address]) == 0
        listing = capsys.readouterr().out
        assert "tiny-llama" in listing and "production=1" in listing
        dest = tmp_path / "pulled"
        assert main(["registry", "pull", "tiny-llama@production", str(dest), "--registry", address]) == 0
        assert (dest / "config.json").is_file() and (dest / "tokenizer.json").is_file()

    # A second start reuses the registry state instead of pushing a second version.
    with cairn_up(tmp_path) as (addresses, _):
        _check_scheduler(addresses["scheduler"])
        capsys.readouterr()
        assert main(["registry", "ls", "tiny-llama", "--registry", addresses["registry"]]) == 0
        versions = capsys.readouterr().out
        assert re.search(r"^\s*1\b", versions, re.M) and not re.search(r"^\s*2\b", versions, re.M)
