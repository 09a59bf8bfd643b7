"""Job records to `cairn.v1.TrainJob` messages, and the spec between its proto and stored forms."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from cairn.jobs.convert import status_to_proto
from cairn.jobs.records import Job
from cairn.v1 import trainer_pb2


def spec_from_dict(data: dict[str, Any]) -> trainer_pb2.TrainJobSpec:
    return json_format.ParseDict(data, trainer_pb2.TrainJobSpec())


def spec_to_dict(spec: trainer_pb2.TrainJobSpec) -> dict[str, Any]:
    """The stored form: JSON with proto field names, so the database stays readable."""
    return json_format.MessageToDict(spec, preserving_proto_field_name=True)


def job_to_proto(job: Job) -> trainer_pb2.TrainJob:
    message = trainer_pb2.TrainJob(id=job.id, spec=spec_from_dict(job.spec), status=status_to_proto(job))
    if job.result is not None:
        metrics = job.result.metrics
        if "final_train_loss" in metrics:
            message.final_train_loss = metrics["final_train_loss"]
        if "final_eval_loss" in metrics:
            message.final_eval_loss = metrics["final_eval_loss"]
    return message
