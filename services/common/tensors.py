"""NumPy <-> wire tensors, as raw bytes both ways (no per-element conversion).

Two wire formats:
  * `mufleet.Tensor` (protos/tensor.proto) for MuFleet's own services: here, free of TensorFlow;
  * TensorFlow's `TensorProto` with `tensor_content` for TensorFlow Serving's API: in
    `services.common.tf_tensors` (`to_tensor_proto`, `fill_tensor_proto`, `from_tensor_proto`),
    which imports TensorFlow. This module does not, so that the environment, the replay and
    their clients start without it.
"""

from __future__ import annotations

import math

import numpy as np

from protos import tensor_pb2 as mufleet_tensor_pb2

_TO_WIRE = {
    np.dtype(np.float32): mufleet_tensor_pb2.FLOAT32,
    np.dtype(np.float64): mufleet_tensor_pb2.FLOAT64,
    np.dtype(np.float16): mufleet_tensor_pb2.FLOAT16,
    np.dtype(np.int8): mufleet_tensor_pb2.INT8,
    np.dtype(np.int16): mufleet_tensor_pb2.INT16,
    np.dtype(np.int32): mufleet_tensor_pb2.INT32,
    np.dtype(np.int64): mufleet_tensor_pb2.INT64,
    np.dtype(np.uint8): mufleet_tensor_pb2.UINT8,
    np.dtype(np.bool_): mufleet_tensor_pb2.BOOL,
}
_FROM_WIRE = {wire: dtype for dtype, wire in _TO_WIRE.items()}


class TensorError(ValueError):
    """A wire tensor that cannot be decoded (unknown dtype, bytes that disagree with the shape)."""


class TensorTooLarge(TensorError):
    """A wire tensor whose shape asks for more than the decoder's byte limit (servers answer
    RESOURCE_EXHAUSTED), refused before anything is allocated."""


def element_count(shape: tuple[int, ...], name: str = "tensor") -> int:
    """The exact number of elements of `shape` (Python integers: no int64 wrap-around, so
    `[2**62, 4]` is 2**64, not 0); TensorError naming `name` for a negative dimension."""
    if any(d < 0 for d in shape):
        raise TensorError(f"{name}: negative dimension in shape {list(shape)}")
    return math.prod(int(d) for d in shape)


def check_size(shape: tuple[int, ...], dtype: np.dtype, name: str, max_bytes: int | None) -> int:
    """Bytes that `shape` of `dtype` takes (exact); TensorTooLarge when over `max_bytes`."""
    nbytes = element_count(shape, name) * np.dtype(dtype).itemsize
    if max_bytes is not None and nbytes > max_bytes:
        raise TensorTooLarge(f"{name}: shape {list(shape)} of {np.dtype(dtype)} is {nbytes} bytes, "
                             f"over the limit of {max_bytes} bytes")
    return nbytes


def _little_endian(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array


def to_tensor(array: np.ndarray) -> mufleet_tensor_pb2.Tensor:
    """A NumPy array as a `mufleet.Tensor`."""
    array = _little_endian(array)
    if array.dtype not in _TO_WIRE:
        raise TensorError(f"dtype {array.dtype} has no wire encoding")
    return mufleet_tensor_pb2.Tensor(dtype=_TO_WIRE[array.dtype], shape=array.shape,
                                     content=np.ascontiguousarray(array).tobytes())


def from_tensor(tensor: mufleet_tensor_pb2.Tensor, name: str = "tensor") -> np.ndarray:
    """A `mufleet.Tensor` as a read-only NumPy array; TensorError names `name` if malformed."""
    dtype = _FROM_WIRE.get(tensor.dtype)
    if dtype is None:
        raise TensorError(f"{name}: unknown dtype {tensor.dtype}")
    return _decode(tensor.content, dtype, tuple(tensor.shape), name)


def _decode(content: bytes, dtype: np.dtype, shape: tuple[int, ...], name: str) -> np.ndarray:
    expected = check_size(shape, dtype, name, max_bytes=None)
    if len(content) != expected:
        raise TensorError(f"{name}: {len(content)} bytes for shape {list(shape)} of {dtype} "
                          f"(expected {expected})")
    try:
        return np.frombuffer(content, dtype=dtype).reshape(shape)
    except ValueError as error:  # NumPy's own limits: more than 64 dimensions, a dimension >= 2**63
        raise TensorError(f"{name}: shape {list(shape)} is not a valid array shape ({error})") from None
