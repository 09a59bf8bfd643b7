"""`cairn quantize` here and through the service, and `cairn quantizer serve` as a real process."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cairn.cli import main
from cairn.v1 import quantizer_pb2, quantizer_pb2_grpc

SMALL = [
    "--num-samples",
    "4",
    "--seq-len",
    "64",
    "--eval-samples",
    "2",
    "--eval-seq-len",
    "64",
    "--device",
    "cpu",
]


def test_quantize_directory_to_directory(
    source: Path, calibration_file: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "tiny-w4a16"
    argv = ["quantize", "-i", str(source), "-o", str(out), "--quant-type", "weight_only_int4",
            "--group-size", "32", "--calib", str(calibration_file), *SMALL]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "perplexity" in printed and "over 126 held-out tokens" in printed
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (
        config["format"] == "pack-quantized"
        and config["config_groups"]["group_0"]["weights"]["group_size"] == 32
    )


def test_paddle_style_flags_and_token_ids(source: Path, tmp_path: Path, capsys) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text(
        "\n".join(" ".join(str(3 + (i * 7 + j) % 500) for j in range(100)) for i in range(12)) + "\n"
    )
    out = tmp_path / "tiny-a8w8"
    argv = ["quantize", "-i", str(source), "-o", str(out), "-quant_type", "a8w8", "-sq", "0.5", "-t", "fp16",
            "--tokenids", str(ids), *SMALL]  # fmt: skip
    assert main(argv) == 0
    recipe = json.loads((out / "quantization_recipe.json").read_text())
    assert recipe["method"] == "smooth_quant" and recipe["parameters"]["alpha"] == 0.5
    assert recipe["parameters"]["dtype"] == "float16" and recipe["calibration"]["samples"] == 4
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"


def test_registry_reference_to_registry_model(
    source_ref, registry_service, registry, calibration_file, capsys
):
    argv = ["quantize", "-i", "tiny@base", "-o", "acme/tiny-int8", "--quant-type", "weight_only_int8",
            "--eval", str(calibration_file), "--registry", registry_service.address, *SMALL]  # fmt: skip
    assert main(argv) == 0
    assert "wrote acme/tiny-int8@1" in capsys.readouterr().out
    version = registry.resolve("acme/tiny-int8@1")
    assert version.format == "compressed-tensors" and [str(p) for p in version.parents] == ["tiny@1"]
    assert version.recipe["evaluation"]["eval_tokens"] == 126


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--quant-type", "int3", "-o", "/x"], "unknown --quant-type 'int3'"),
        (["--quant-type", "gptq", "-o", "/x"], "gptq needs calibration data"),
        (["--quant-type", "weight_only_int4", "-o", "/x"], "group_size 128 does not divide hidden_size"),
        (["--quant-type", "fp8"], "-o DST is required"),
    ],
)
def test_bad_local_runs_say_why(source: Path, flags: list[str], message: str, capsys) -> None:
    assert main(["quantize", "-i", str(source), *flags, "--device", "cpu"]) == 1
    assert message in capsys.readouterr().err


def test_watch_show_and_ls_through_the_service(quantizer_service, submitted, capsys) -> None:
    address = ["--quantizer", quantizer_service.address]
    job_id = submitted["gptq"].id
    assert main(["quantize", "watch", job_id, *address]) == 0
    out = capsys.readouterr().out
    assert f"{job_id} succeeded: published acme/tiny-gptq@1" in out and "perplexity" in out
    assert main(["quantize", "show", job_id, *address]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["spec"]["quant_type"] == "QUANT_TYPE_GPTQ" and shown["report"]["eval_tokens"] == "252"
    assert main(["quantize", "ls", "--state", "succeeded", *address]) == 0
    assert job_id in capsys.readouterr().out
    assert main(["quantize", "watch", submitted["bad"].id, *address]) == 1
    assert "group_size 48 does not divide" in capsys.readouterr().err


def test_submit_and_cancel(quantizer_service, source_ref, capsys) -> None:
    address = ["--quantizer", quantizer_service.address]
    assert main(["quantize", "submit", "-i", "tiny@base", "--quant-type", "fp8", *address]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("submitted quant-") and "output tiny-fp8" in printed
    job_id = printed.split()[1]
    assert main(["quantize", "cancel", job_id, *address]) == 0
    assert f"{job_id} cancelled" in capsys.readouterr().out
    assert main(["quantize", "submit", "-i", "tiny@base", "--quant-type", "awq", *address]) == 1
    assert "awq needs calibration data" in capsys.readouterr().err


def test_unreachable_quantizer(capsys) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["quantize", "ls", "--quantizer", f"127.0.0.1:{port}"]) == 1
    assert "is `cairn quantizer serve` running there?" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_quantizer_serve_process(tmp_path: Path) -> None:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cairn.cli", "quantizer", "serve", "--port", str(port), "--metrics-port", "0",
         "--root", str(tmp_path / "quantizer")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="cairn.v1.Quantizer")
            deadline = time.monotonic() + 90
            while True:
                try:
                    if health.Check(request, timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                assert process.poll() is None, process.stderr.read().decode()
                assert time.monotonic() < deadline, "the quantizer never became healthy"
                time.sleep(0.2)
            stub = quantizer_pb2_grpc.QuantizerStub(channel)
            with pytest.raises(grpc.RpcError) as failure:
                stub.SubmitJob(quantizer_pb2.QuantizeJobSpec(source={"ref": "tiny"}), timeout=10)
            assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "quant_type is required" in failure.value.details()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
