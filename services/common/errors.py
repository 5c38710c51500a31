"""Requests that cannot be served, and the one way every MuFleet servicer answers them."""

from __future__ import annotations

import time
import traceback
from typing import Callable, TypeVar

import grpc

from services.common.logs import EventLogger

T = TypeVar("T")


class ServiceError(Exception):
    """A request that cannot be served.

    Attributes:
      code: name of the gRPC status code, e.g. "INVALID_ARGUMENT", "NOT_FOUND".
      message: what was wrong, starting with the request field, e.g. "actions: ...".
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def serve_rpc(method: str, context: grpc.ServicerContext, body: Callable[[], T], log: EventLogger,
              request_seconds, errors) -> T:
    """Runs `body` for RPC `method`, timing it into `request_seconds{method}`.

    A ServiceError aborts the call with its code and message; any other exception (a bug) is
    logged with its traceback and answers INTERNAL, and the server keeps serving. Each
    rejection counts in `errors{method, code}` and logs one `request_rejected` line.
    """
    started = time.perf_counter()
    try:
        return body()
    except ServiceError as error:
        code, message = grpc.StatusCode[error.code], error.message
    except Exception as error:  # a bug: report it, keep serving
        code, message = grpc.StatusCode.INTERNAL, f"{method} failed: {error!r}"
        log.error("internal_error", method=method, error=repr(error), traceback=traceback.format_exc())
    finally:
        request_seconds.labels(method).observe(time.perf_counter() - started)
    errors.labels(method, code.name).inc()
    log.warning("request_rejected", method=method, code=code.name, message=message)
    context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")
