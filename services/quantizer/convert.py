"""Job records to `cairn.v1.QuantizeJob` messages, and the spec between its proto and stored forms."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from cairn.jobs.convert import status_to_proto
from cairn.jobs.records import Job
from cairn.v1 import quantizer_pb2

_REPORT_FIELDS = (
    "perplexity_before",
    "perplexity_after",
    "size_bytes_before",
    "size_bytes_after",
    "eval_tokens",
)


def spec_from_dict(data: dict[str, Any]) -> quantizer_pb2.QuantizeJobSpec:
    return json_format.ParseDict(data, quantizer_pb2.QuantizeJobSpec())


def spec_to_dict(spec: quantizer_pb2.QuantizeJobSpec) -> dict[str, Any]:
    """The stored form: JSON with proto field names, so the database stays readable."""
    return json_format.MessageToDict(spec, preserving_proto_field_name=True)


def report_to_proto(metrics: dict[str, float]) -> quantizer_pb2.EvalReport:
    values = {name: metrics[name] for name in _REPORT_FIELDS if name in metrics}
    for name in ("size_bytes_before", "size_bytes_after", "eval_tokens"):
        if name in values:
            values[name] = int(values[name])
    return quantizer_pb2.EvalReport(**values)


def job_to_proto(job: Job) -> quantizer_pb2.QuantizeJob:
    message = quantizer_pb2.QuantizeJob(id=job.id, spec=spec_from_dict(job.spec), status=status_to_proto(job))
    if job.result is not None:
        message.report.CopyFrom(report_to_proto(job.result.metrics))
    return message
