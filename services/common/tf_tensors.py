"""NumPy <-> TensorFlow's `TensorProto` (with `tensor_content` bytes), for TensorFlow Serving's API.

Split from `services.common.tensors` because importing TensorFlow's protos imports all of
TensorFlow (seconds of start-up); services that only speak MuFleet's own `Tensor` (the
environment, replay) stay free of it. Import these functions from this module; the raw-bytes
decoding and the size checks they share with `mufleet.Tensor` stay in `services.common.tensors`.
"""

from __future__ import annotations

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

from services.common.tensors import TensorError, _decode, _little_endian, check_size

# NumPy dtype -> TensorFlow DataType enum, for the dtypes MuFleet puts on the wire.
TF_DTYPES = {
    np.dtype(np.float32): types_pb2.DT_FLOAT,
    np.dtype(np.float64): types_pb2.DT_DOUBLE,
    np.dtype(np.float16): types_pb2.DT_HALF,
    np.dtype(np.int8): types_pb2.DT_INT8,
    np.dtype(np.int16): types_pb2.DT_INT16,
    np.dtype(np.int32): types_pb2.DT_INT32,
    np.dtype(np.int64): types_pb2.DT_INT64,
    np.dtype(np.uint8): types_pb2.DT_UINT8,
    np.dtype(np.bool_): types_pb2.DT_BOOL,
}
_FROM_TF = {wire: dtype for dtype, wire in TF_DTYPES.items()}

# Typed values may broadcast one number over a whole shape: without a limit a 10-byte request
# could ask for terabytes. Servers pass their own, smaller limit.
DEFAULT_MAX_TENSOR_BYTES = 1 << 30


def fill_tensor_proto(proto: tensor_pb2.TensorProto, array: np.ndarray) -> None:
    """Writes `array` into the (empty) TensorProto `proto` in place (no copy of a message):
    dtype, shape, and the bytes in `tensor_content`."""
    array = _little_endian(array)
    dtype = TF_DTYPES.get(array.dtype)
    if dtype is None:
        raise TensorError(f"dtype {array.dtype} has no TensorFlow encoding")
    proto.dtype = dtype
    dims = proto.tensor_shape.dim
    for size in array.shape:
        dims.add().size = size
    proto.tensor_content = array.tobytes()  # C order, whatever the array's layout


def to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A NumPy array as TensorFlow's `TensorProto`, with its bytes in `tensor_content`."""
    proto = tensor_pb2.TensorProto()
    fill_tensor_proto(proto, array)
    return proto


def from_tensor_proto(proto: tensor_pb2.TensorProto, name: str = "tensor",
                      max_bytes: int | None = DEFAULT_MAX_TENSOR_BYTES) -> np.ndarray:
    """TensorFlow's `TensorProto` as NumPy. Reads `tensor_content`, or the typed value
    fields that other TensorFlow Serving clients may send (one value fills the whole shape,
    as in TensorFlow).

    The shape is checked (no negative dimension, exact element count) before anything is
    allocated; TensorTooLarge when it would take more than `max_bytes` (None: no limit,
    for trusted responses).
    """
    dtype = _FROM_TF.get(proto.dtype)
    if dtype is None:
        raise TensorError(f"{name}: unsupported dtype {types_pb2.DataType.Name(proto.dtype)}")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    count = check_size(shape, dtype, name, max_bytes) // dtype.itemsize
    if proto.tensor_content or count == 0:
        return _decode(proto.tensor_content, dtype, shape, name)
    values = {
        np.dtype(np.float32): proto.float_val, np.dtype(np.float64): proto.double_val,
        np.dtype(np.int64): proto.int64_val, np.dtype(np.bool_): proto.bool_val,
        np.dtype(np.float16): proto.half_val,
    }.get(dtype, proto.int_val)
    if len(values) not in (1, count):
        raise TensorError(f"{name}: {len(values)} values for shape {list(shape)}")
    array = np.asarray(values, dtype=dtype)
    if dtype == np.float16:
        array = np.asarray(values, np.uint16).view(np.float16)
    if array.size == 1:
        return np.full(shape, array[0], dtype)
    return array.reshape(shape)
