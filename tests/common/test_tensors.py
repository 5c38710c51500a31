"""Wire tensors: exact sizes, refusals before any allocation."""

from __future__ import annotations

import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2

from protos import tensor_pb2 as mufleet_tensor_pb2
from services.common.tensors import (TensorError, TensorTooLarge, element_count, from_tensor,
                                     to_tensor)
from services.common.tf_tensors import from_tensor_proto, to_tensor_proto


def test_round_trip():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(from_tensor(to_tensor(array)), array)
    np.testing.assert_array_equal(from_tensor_proto(to_tensor_proto(array)), array)


def test_element_count_is_exact_where_int64_wraps():
    assert element_count((2**62, 4)) == 2**64
    assert int(np.prod((2**62, 4), dtype=np.int64)) == 0  # what a wrapped product would accept


@pytest.mark.parametrize("shape", [(2**62, 4), (2**32, 2**32), (-1, 4), (2, -3), (0, 2**63 - 1),
                                   (1,) * 70])
def test_mufleet_tensor_with_impossible_shape_is_a_tensor_error(shape):
    tensor = mufleet_tensor_pb2.Tensor(dtype=mufleet_tensor_pb2.FLOAT32, shape=shape, content=b"")
    with pytest.raises(TensorError, match="observations"):
        from_tensor(tensor, "observations")


def _typed(shape, values=(1.0,)) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=list(values))
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    return proto


def test_one_typed_value_fills_the_shape():
    np.testing.assert_array_equal(from_tensor_proto(_typed((2, 3))), np.ones((2, 3), np.float32))


def test_typed_value_broadcast_is_refused_before_allocating():
    # 10**12 x 4 float32 would be 14.6 TiB: refused from the shape alone
    with pytest.raises(TensorTooLarge, match=r"inputs\['observation'\].*over the limit of 1000 bytes"):
        from_tensor_proto(_typed((10**12, 4)), "inputs['observation']", max_bytes=1000)


@pytest.mark.parametrize("shape", [(-1, 4), (2**62, 4)])
def test_typed_values_with_impossible_shape_are_tensor_errors(shape):
    with pytest.raises(TensorError, match="inputs"):
        from_tensor_proto(_typed(shape), "inputs")


def test_typed_values_must_fill_the_shape_exactly():
    with pytest.raises(TensorError, match="2 values for shape"):
        from_tensor_proto(_typed((2, 3), values=(1.0, 2.0)), "inputs")
