"""A failed gRPC call for unit tests of retry and failure handling (no server needed)."""

from __future__ import annotations

import grpc


class FakeRpcError(grpc.RpcError):
    """What a stub raises for a call answered with `code` and `details` (default: the code's
    name in lower case)."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(details)
        self._code, self._details = code, details or code.name.lower()

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details
