"""Errors that core logic raises and every server maps to a status.

Core code raises these; the gRPC shell (cairn.common.server) turns them into
the matching `grpc.StatusCode` and the HTTP router into OpenAI-style errors, so
a message written once reaches every client the same way.
"""

from __future__ import annotations

import grpc


class CairnError(Exception):
    """Base class: an error a caller can act on. `code` picks the gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(CairnError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class NotFound(CairnError):
    code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class AlreadyExists(CairnError):
    code = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409


class FailedPrecondition(CairnError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409


class ResourceExhausted(CairnError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429


class Unavailable(CairnError):
    code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class Unauthenticated(CairnError):
    code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class PermissionDenied(CairnError):
    code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403


class DataLoss(CairnError):
    code = grpc.StatusCode.DATA_LOSS
    http_status = 500


class Cancelled(CairnError):
    code = grpc.StatusCode.CANCELLED
    http_status = 499


class DeadlineExceeded(CairnError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504


class Unimplemented(CairnError):
    code = grpc.StatusCode.UNIMPLEMENTED
    http_status = 501


_BY_CODE = {cls.code: cls for cls in CairnError.__subclasses__()}


def from_status(code: grpc.StatusCode, message: str) -> CairnError:
    """The client-side inverse: rebuild the typed error from an RpcError's status.

    Codes without a class of their own (UNKNOWN, UNIMPLEMENTED, ...) keep their
    code on a plain CairnError, so re-raising passes the status on unchanged.
    """
    error = _BY_CODE.get(code, CairnError)(message)
    error.code = code
    return error
