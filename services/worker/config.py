"""Configuration of a standalone worker process (`cairn worker serve`).

Under the scheduler, workers run as Ray actors and receive their engine
configuration through LoadModel; standalone, `model` loads at start.
"""

from __future__ import annotations

from cairn.common.config import GrpcPort, MetricsPort, ServiceConfig


class WorkerConfig(ServiceConfig):
    service_name = "worker"
    port: GrpcPort = 50054
    metrics_port: MetricsPort = 9094
    # Unique id reported in WorkerInfo; defaults to host:port.
    worker_id: str = ""
    # Load this model (directory or registry reference) at start; empty: wait for LoadModel.
    model: str = ""
    # "auto", "cpu", "cuda" or "xpu". Registry references resolve against $CAIRN_REGISTRY.
    device: str = "auto"
