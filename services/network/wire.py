"""Wire helpers of the network service: TensorFlow dtype names for error messages.

Tensors are written straight into a request's or response's map entry with
`services.common.tf_tensors.fill_tensor_proto` (no intermediate message, one copy of the bytes)
and read with `from_tensor_proto` (zero-copy).
"""

from __future__ import annotations

from tensorflow.core.framework import types_pb2

from services.common.tf_tensors import TF_DTYPES, fill_tensor_proto

__all__ = ["TF_DTYPES", "fill_tensor_proto", "tf_dtype_name"]


def tf_dtype_name(dtype: int) -> str:
    """"DT_FLOAT" -> "float32" style names for error messages."""
    for np_dtype, tf_dtype in TF_DTYPES.items():
        if tf_dtype == dtype:
            return np_dtype.name
    try:
        return types_pb2.DataType.Name(dtype)
    except ValueError:
        return f"dtype {dtype}"
