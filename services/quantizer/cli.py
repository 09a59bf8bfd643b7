"""`cairn quantizer serve` runs the service; `cairn quantize` quantizes here or through the service.

    cairn quantize -i SRC -o DST --quant-type gptq -t bf16 --calib data.jsonl --group-size 128
    cairn quantize submit -i acme/llama@3 --quant-type awq --calib s3://bucket/calib.jsonl --watch
    cairn quantize watch|ls|show|cancel ...

SRC and DST are directories (absolute, ./relative or existing) or registry
references; a registry DST is published as a new version of that model with
the source as its parent. `--quant-type` also takes PaddleNLP-style names
(weight_only_int8, smooth_quant / a8w8) and `-sq` / `-quant_type` spellings.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from cairn.common.cli import ClientCommands
from cairn.common.errors import CairnError, InvalidArgument, Unavailable
from cairn.common.server import add_serve_command
from cairn.jobs.cli import JobCommands, state_name

from .config import QuantizerConfig

PROG = "cairn quantize"
_QUANT_TYPES = {
    "weight_only_int8": "QUANT_TYPE_WEIGHT_ONLY_INT8",
    "wint8": "QUANT_TYPE_WEIGHT_ONLY_INT8",
    "w8a16": "QUANT_TYPE_WEIGHT_ONLY_INT8",
    "weight_only_int4": "QUANT_TYPE_WEIGHT_ONLY_INT4",
    "wint4": "QUANT_TYPE_WEIGHT_ONLY_INT4",
    "w4a16": "QUANT_TYPE_WEIGHT_ONLY_INT4",
    "gptq": "QUANT_TYPE_GPTQ",
    "awq": "QUANT_TYPE_AWQ",
    "smooth_quant": "QUANT_TYPE_SMOOTH_QUANT",
    "smoothquant": "QUANT_TYPE_SMOOTH_QUANT",
    "a8w8": "QUANT_TYPE_SMOOTH_QUANT",
    "w8a8": "QUANT_TYPE_SMOOTH_QUANT",
    "fp8": "QUANT_TYPE_FP8",
    "kv_cache_only": "QUANT_TYPE_KV_CACHE_ONLY",
}


def _services(config: QuantizerConfig) -> Any:
    from .server import quantizer_services

    return quantizer_services(config)


def register(subparsers: argparse._SubParsersAction) -> None:
    service = subparsers.add_parser("quantizer", help="the quantization service")
    add_serve_command(
        service.add_subparsers(dest="quantizer_command", required=True), QuantizerConfig, _services
    )

    quantize = subparsers.add_parser(
        "quantize",
        help="post-training quantization, here (-i SRC -o DST ...) or as a job (submit, watch, ls, ...)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_spec_arguments(quantize, local=True)
    quantize.set_defaults(func=_run_here)
    sub = quantize.add_subparsers(dest="quantize_command", metavar="COMMAND")

    submit = _CLIENT.add(sub, "submit", "submit a quantization job to the service", _submit)
    _add_spec_arguments(submit, local=False)
    submit.add_argument("--runner", choices=("local", "ray", "kubernetes"), help="where the job runs")
    submit.add_argument("--watch", action="store_true", help="follow the job until it ends")

    _JOBS.add(sub)


def _add_spec_arguments(parser: argparse.ArgumentParser, *, local: bool) -> None:
    parser.add_argument("-i", "--input", metavar="SRC", help="source model: directory or registry reference")
    parser.add_argument(
        "-o",
        "--output",
        metavar="DST",
        help="output directory or registry model name"
        if local
        else "registry model to publish under (default <source>-<scheme>)",
    )
    parser.add_argument(
        "--quant-type", "--quant_type", "-quant_type", dest="quant_type", metavar="TYPE",
        help=f"one of {', '.join(_QUANT_TYPES)}",
    )  # fmt: skip
    parser.add_argument("-t", "--dtype", help="dtype of what stays unquantized: bf16 (default) or fp16")
    parser.add_argument("--sq", "-sq", dest="alpha", type=float, help="SmoothQuant migration strength (0.8)")
    parser.add_argument("--bits", type=int, default=0, help="GPTQ weight bits: 4 (default) or 8")
    parser.add_argument("--group-size", type=int, default=0, help="group size (default 128; -1: per channel)")
    parser.add_argument("--asym", action="store_true", help="asymmetric INT weights (zero points)")
    parser.add_argument("--act-order", action="store_true", help="GPTQ: columns by decreasing activation")
    parser.add_argument("--damp", type=float, help="GPTQ Hessian dampening fraction (0.01)")
    data = parser.add_mutually_exclusive_group()
    data.add_argument(
        "--calib", metavar="PATH", help="calibration text/JSONL dataset (path, URL or ref:path)"
    )
    data.add_argument("--tokenids", metavar="PATH", help="calibration token-ids file, one sequence per line")
    parser.add_argument("--num-samples", type=int, default=0, help="calibration samples (128)")
    parser.add_argument("--seq-len", type=int, default=0, help="tokens per calibration sample (512)")
    parser.add_argument(
        "--eval", metavar="PATH", help="held-out text for perplexity (default: calibration rest)"
    )
    parser.add_argument("--eval-samples", type=int, default=0, help="evaluation samples (32)")
    parser.add_argument("--eval-seq-len", type=int, default=0, help="tokens per evaluation sample (512)")
    parser.add_argument("--kv-cache", choices=("int8", "fp8"), help="quantize the KV cache too")
    parser.add_argument("--kv-static", action="store_true", help="calibrate static KV scales (else dynamic)")
    parser.add_argument("--ignore", action="append", default=[], help="module to keep unquantized (repeat)")
    parser.add_argument("--alias", action="append", default=[], help="alias for a published version (repeat)")
    if local:
        parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
        parser.add_argument("--registry", metavar="ADDR", help="registry address (default $CAIRN_REGISTRY)")


def spec_from_args(args: argparse.Namespace, output_name: str = "") -> Any:
    """The QuantizeJobSpec the command line describes."""
    from cairn.v1 import quantizer_pb2

    if not args.input:
        raise InvalidArgument("-i SRC is required: a model directory or registry reference")
    if not args.quant_type:
        raise InvalidArgument(f"--quant-type is required: one of {', '.join(_QUANT_TYPES)}")
    quant_type = _QUANT_TYPES.get(args.quant_type.strip().lower().replace("-", "_"))
    if quant_type is None:
        raise InvalidArgument(f"unknown --quant-type {args.quant_type!r}; one of {', '.join(_QUANT_TYPES)}")
    spec = quantizer_pb2.QuantizeJobSpec(
        source={"ref": args.input},
        quant_type=quantizer_pb2.QuantType.Value(quant_type),
        bits=args.bits,
        group_size=args.group_size,
        act_order=args.act_order,
        dtype=args.dtype or "",
        calibration=quantizer_pb2.CalibrationSpec(
            dataset_uri=args.calib or "",
            token_ids_uri=args.tokenids or "",
            num_samples=args.num_samples,
            seq_len=args.seq_len,
        ),
        eval=quantizer_pb2.EvalSpec(
            dataset_uri=args.eval or "", num_samples=args.eval_samples, seq_len=args.eval_seq_len
        ),
        kv_cache=quantizer_pb2.KvCacheQuantSpec(dtype=args.kv_cache or "", static_scales=args.kv_static),
        output_name=output_name,
        aliases=args.alias,
        ignore=args.ignore,
    )
    if args.asym:
        spec.symmetric = False
    if args.damp is not None:
        spec.damp_percent = args.damp
    if args.alpha is not None:
        spec.smoothquant_alpha = args.alpha
    return spec


# ---- quantize here


def _run_here(args: argparse.Namespace) -> int:
    try:
        return _quantize_here(args)
    except Unavailable as e:
        print(
            f"{PROG}: the registry is unavailable ({e.message}); a SRC/DST that is not a directory is a "
            "registry reference: start the registry, set --registry, or write ./DST for a local directory",
            file=sys.stderr,
        )
    except CairnError as e:
        print(f"{PROG}: {e.message}", file=sys.stderr)
    return 1


def _quantize_here(args: argparse.Namespace) -> int:
    from cairn.jobs.datasets import fetch
    from cairn.services.registry.client import RegistryClient

    from .plan import is_directory, plan_from_spec
    from .quantize import quantize
    from .work import publish, resolve_device

    if not args.output:
        raise InvalidArgument("-o DST is required: an output directory or a registry model name")
    to_directory = is_directory(args.output)
    plan = plan_from_spec(spec_from_args(args, "" if to_directory else args.output))
    with (
        RegistryClient(args.registry) as registry,
        tempfile.TemporaryDirectory(prefix="cairn-quantize-") as tmp,
    ):
        source_ref = ""
        if is_directory(plan.source):
            source_dir = Path(plan.source).expanduser()
        else:
            source_ref = registry.resolve(plan.source).ref
            source_dir = registry.materialize(source_ref)
        out_dir = Path(args.output).expanduser() if to_directory else Path(tmp) / "output"
        with _ProgressBar(plan.scheme) as bar:
            outcome = quantize(
                plan,
                source_dir,
                out_dir,
                fetch=lambda uri: fetch(uri, Path(tmp) / "data", registry, None),
                device=resolve_device(args.device),
                report=bar.update,
                lineage={"quantizer": "cairn", "source": source_ref or str(source_dir.resolve())},
            )
        where = str(out_dir)
        if not to_directory:
            result = publish(registry, plan, outcome, source_ref, "")
            where = f"{result.model}@{result.version}"
        _print_report(outcome.evaluation, where)
    return 0


class _ProgressBar:
    """A tqdm bar over the quantization's steps, its postfix the current stage."""

    def __init__(self, description: str) -> None:
        self.description = description

    def __enter__(self) -> _ProgressBar:
        from tqdm import tqdm

        self.bar = tqdm(desc=self.description, unit="step", dynamic_ncols=True, file=sys.stderr)
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def update(self, step: int, total: int, message: str) -> None:
        self.bar.total = total
        self.bar.n = step
        self.bar.set_postfix_str(message, refresh=False)
        self.bar.refresh()


def _print_report(evaluation: Any, where: str) -> None:
    print(f"wrote {where}")
    size = f"{evaluation.size_bytes_before / 2**20:.1f} MiB -> {evaluation.size_bytes_after / 2**20:.1f} MiB"
    if evaluation.eval_tokens:
        print(
            f"perplexity {evaluation.perplexity_before:.4f} -> {evaluation.perplexity_after:.4f} "
            f"over {evaluation.eval_tokens} held-out tokens; weights {size}"
        )
    else:
        print(f"no held-out text, no perplexity; weights {size}")


# ---- through the service


def _connect(address: str | None) -> Any:
    from cairn.services.quantizer.client import QuantizerClient

    return QuantizerClient(address)


_CLIENT = ClientCommands(PROG, "quantizer", "--quantizer", "CAIRN_QUANTIZER", "127.0.0.1:50057", _connect)


def _submit(client: Any, args: argparse.Namespace) -> int:
    from cairn.jobs.convert import RUNNER_TO_PROTO
    from cairn.jobs.records import RunnerKind

    from .plan import plan_from_spec

    spec = spec_from_args(args, args.output or "")
    if args.runner:
        spec.runner = RUNNER_TO_PROTO[RunnerKind(args.runner)]
    plan_from_spec(spec)
    job = client.submit(spec)
    print(f"submitted {job.id} ({state_name(job.status.state)}, output {job.spec.output_name})")
    if args.watch:
        return _JOBS.follow(client, job.id, logs=False)
    return 0


def _describe(status: Any) -> str:
    return f"{state_name(status.state)}: {status.progress.message}"


def _succeeded(client: Any, job_id: str, status: Any) -> None:
    report = client.get(job_id).report
    print(f"{job_id} succeeded: published {status.result.model}@{status.result.version}")
    print(
        f"perplexity {report.perplexity_before:.4f} -> {report.perplexity_after:.4f} "
        f"over {report.eval_tokens} "
        f"tokens; weights {report.size_bytes_before} -> {report.size_bytes_after} bytes"
    )


def _row(job: Any) -> str:
    from cairn.v1 import quantizer_pb2

    progress = job.status.progress
    steps = f"{progress.step}/{progress.total_steps}" if progress.total_steps else "-"
    method = quantizer_pb2.QuantType.Name(job.spec.quant_type).removeprefix("QUANT_TYPE_").lower()
    created = job.status.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M")
    ppl = f"{job.report.perplexity_after:.3f}" if job.report.eval_tokens else "-"
    return (
        f"{job.id}  {state_name(job.status.state):9}  {method:16}  {job.spec.source.ref:28}  {steps:>7}  "
        f"ppl {ppl:>9}  {created}"
    )


_JOBS = JobCommands(_CLIENT, _describe, _succeeded, _row, show_help="a job's spec, status and report as JSON")
