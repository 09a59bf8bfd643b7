"""Python client for the quantizer (blocking; for the CLI, notebooks and pipelines).

    client = QuantizerClient()               # $CAIRN_QUANTIZER or 127.0.0.1:50057
    job = client.submit(spec)                # a cairn.v1.QuantizeJobSpec
    for event in client.watch(job.id):       # current status first, then each change
        print(event.status.progress.message)

Failed calls raise the typed `cairn.common.errors` exception for their status.
"""

from __future__ import annotations

from cairn.jobs.client import JobServiceClient
from cairn.v1 import quantizer_pb2, quantizer_pb2_grpc


class QuantizerClient(JobServiceClient[quantizer_pb2.QuantizeJob]):
    default_target = "127.0.0.1:50057"
    target_env = "CAIRN_QUANTIZER"
    stub_class = quantizer_pb2_grpc.QuantizerStub
