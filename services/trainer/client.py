"""Python client for the trainer (blocking; for the CLI, notebooks and pipelines).

    client = TrainerClient()                  # $CAIRN_TRAINER or 127.0.0.1:50056
    job = client.submit(spec)                 # a cairn.v1.TrainJobSpec
    for event in client.watch(job.id):        # current status first, then each change
        print(event.status.progress.loss)

Failed calls raise the typed `cairn.common.errors` exception for their status.
"""

from __future__ import annotations

from cairn.jobs.client import JobServiceClient
from cairn.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc


class TrainerClient(JobServiceClient[trainer_pb2.TrainJob]):
    default_target = "127.0.0.1:50056"
    target_env = "CAIRN_TRAINER"
    stub_class = trainer_pb2_grpc.TrainerStub

    def resume(self, job_id: str) -> trainer_pb2.TrainJob:
        return self._call(self._stub.ResumeJob, common_pb2.JobId(job_id=job_id))
