"""Filling TensorFlow `TensorProto`s in place (no intermediate message, one copy of the bytes).

`services.common.tensors.to_tensor_proto` builds a new message that the caller then copies
into a request's or response's map; on the hot path of the network server and its client we
write straight into the map entry instead. Decoding uses `from_tensor_proto` (zero-copy).
"""

from __future__ import annotations

import numpy as np
from tensorflow.core.framework import types_pb2

from services.common.tensors import TensorError

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


def fill_tensor_proto(proto, array: np.ndarray) -> None:
    """Writes `array` into the (empty) TensorProto `proto`: dtype, shape, tensor_content."""
    array = np.asarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    dtype = TF_DTYPES.get(array.dtype)
    if dtype is None:
        raise TensorError(f"dtype {array.dtype} has no TensorFlow encoding")
    proto.dtype = dtype
    dims = proto.tensor_shape.dim
    for size in array.shape:
        dims.add().size = size
    proto.tensor_content = array.tobytes()  # C order, whatever the array's layout


def tf_dtype_name(dtype: int) -> str:
    """"DT_FLOAT" -> "float32" style names for error messages."""
    for np_dtype, tf_dtype in TF_DTYPES.items():
        if tf_dtype == dtype:
            return np_dtype.name
    try:
        return types_pb2.DataType.Name(dtype)
    except ValueError:
        return f"dtype {dtype}"
