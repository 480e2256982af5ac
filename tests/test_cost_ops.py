"""Unit tests of `cost.ops`: hand-computed figures per family, fallbacks, properties."""

from __future__ import annotations

import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cost.opcost import OpCost, OpNode
from cost.ops import KNOWN_OPS, OP_COSTS, op_cost
from cost.ops.matmul import einsum_flops, matmul_dims, parse_einsum
from cost.ops.norm import NORM_BWD, NORM_FWD, NORM_WGRAD
from cost.ops.pointwise import GELU_TANH, POINTWISE
from cost.ops.spatial import window_output_shape
from cost.tensor import TensorInfo

FLOAT = onnx.TensorProto.FLOAT
INT64 = onnx.TensorProto.INT64
BOOL = onnx.TensorProto.BOOL
F16 = onnx.TensorProto.FLOAT16


def t(shape, dtype=FLOAT, name="t") -> TensorInfo:
    return TensorInfo(name, tuple(shape) if shape is not None else None, dtype)


def node(op, inputs, outputs, attrs=None, params=(), domain="") -> OpNode:
    return OpNode(
        op_type=op,
        domain=domain,
        attrs=attrs or {},
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        param_inputs=frozenset(params),
    )


# --------------------------------------------------------------------------------------
# Conv family
# --------------------------------------------------------------------------------------


def test_conv_with_bias():
    # N=2, Cin=3, Cout=8, 3x3, pad 1, 10x10 -> out 2x8x10x10 = 1600 elements
    n = node(
        "Conv",
        [t((2, 3, 10, 10)), t((8, 3, 3, 3)), t((8,))],
        [t((2, 8, 10, 10))],
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
        params={1, 2},
    )
    c = op_cost(n)
    product = 2 * 1600 * 3 * 9  # 86400
    assert c.flops == product + 1600
    assert c.bytes_read == 4 * (600 + 216 + 8)
    assert c.bytes_written == 4 * 1600
    assert c.backward_flops == 2 * product + 1600
    assert c.weight_grad_flops == product + 1600
    assert c.saved_inputs == (0,)
    assert not c.saves_output
    assert c.kind == "compute"
    assert not c.estimated


def test_conv_grouped_depthwise_strided():
    # depthwise 3x3 stride 2 on 1x32x16x16 -> 1x32x8x8; W = [32, 1, 3, 3]
    n = node(
        "Conv",
        [t((1, 32, 16, 16)), t((32, 1, 3, 3))],
        [t((1, 32, 8, 8))],
        {"group": 32, "kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        params={1},
    )
    c = op_cost(n)
    assert c.flops == 2 * 32 * 64 * 9
    assert c.backward_flops == 2 * c.flops
    assert c.weight_grad_flops == c.flops


def test_conv_output_shape_unknown_is_derived_from_attrs():
    known = node(
        "Conv",
        [t((1, 3, 227, 227)), t((64, 3, 11, 11)), t((64,))],
        [t((1, 64, 56, 56))],
        {"kernel_shape": [11, 11], "strides": [4, 4], "pads": [2, 2, 2, 2]},
        params={1, 2},
    )
    unknown = node(
        "Conv",
        known.inputs,
        [t(None)],
        known.attrs,
        params={1, 2},
    )
    a, b = op_cost(known), op_cost(unknown)
    assert a.flops == b.flops == 2 * 64 * 56 * 56 * 363 + 64 * 56 * 56
    assert b.estimated and not a.estimated
    assert b.bytes_written == 0


def test_window_output_shape():
    assert window_output_shape(
        (1, 3, 227, 227), 64, [11, 11], {"strides": [4, 4], "pads": [2] * 4}
    ) == (
        1,
        64,
        56,
        56,
    )
    assert window_output_shape((1, 64, 55, 55), 64, [3, 3], {"strides": [2, 2]}) == (1, 64, 27, 27)
    assert window_output_shape(
        (1, 64, 56, 56), 64, [3, 3], {"strides": [2, 2]}, ceil_mode=True
    ) == (1, 64, 28, 28)
    assert window_output_shape(
        (1, 8, 15, 15), 8, [3, 3], {"strides": [2, 2], "auto_pad": "SAME_UPPER"}
    ) == (1, 8, 8, 8)
    assert window_output_shape(
        (1, 8, 15, 15), 8, [3, 3], {"dilations": [2, 2], "auto_pad": b"VALID"}
    ) == (1, 8, 11, 11)


def test_conv_transpose():
    # X 1x16x8x8, W [16, 4, 2, 2] stride 2 -> Y 1x4x16x16
    n = node(
        "ConvTranspose",
        [t((1, 16, 8, 8)), t((16, 4, 2, 2)), t((4,))],
        [t((1, 4, 16, 16))],
        {"kernel_shape": [2, 2], "strides": [2, 2]},
        params={1, 2},
    )
    c = op_cost(n)
    product = 2 * (16 * 64) * (4 * 4)
    assert c.flops == product + 4 * 256
    assert c.backward_flops == 2 * product + 4 * 256
    assert c.weight_grad_flops == product + 4 * 256
    assert c.kind == "compute" and not c.estimated


# --------------------------------------------------------------------------------------
# Gemm, MatMul, Einsum
# --------------------------------------------------------------------------------------


def test_gemm_linear_layer():
    # torch Linear(9216 -> 4096) at batch 1: A 1x9216, B 4096x9216 transB, C 4096
    n = node(
        "Gemm",
        [t((1, 9216)), t((4096, 9216)), t((4096,))],
        [t((1, 4096))],
        {"transB": 1, "alpha": 1.0, "beta": 1.0},
        params={1, 2},
    )
    c = op_cost(n)
    product = 2 * 9216 * 4096
    assert c.flops == product + 4096
    assert c.bytes_read == 4 * (9216 + 4096 * 9216 + 4096)
    assert c.bytes_written == 4 * 4096
    assert c.backward_flops == 2 * product + 4096
    assert c.weight_grad_flops == product + 4096
    assert c.saved_inputs == (0,)
    assert c.kind == "compute"


def test_gemm_trans_a_alpha_beta_no_bias():
    # A^T: A is K x M = 5 x 3, B is K x N = 5 x 7; alpha != 1 adds M*N
    n = node("Gemm", [t((5, 3)), t((5, 7))], [t((3, 7))], {"transA": 1, "alpha": 0.5})
    c = op_cost(n)
    assert c.flops == 2 * 3 * 7 * 5 + 3 * 7
    # both operands are activations: two input-gradient products, no weight gradient
    assert c.backward_flops == 2 * (2 * 3 * 7 * 5)
    assert c.weight_grad_flops == 0
    assert c.saved_inputs == (0, 1)
    # beta only counts with C
    with_c = node(
        "Gemm", [t((5, 3)), t((5, 7)), t((3, 7))], [t((3, 7))], {"transA": 1, "beta": 2.0}
    )
    assert op_cost(with_c).flops == 2 * 3 * 7 * 5 + 21 + 21


def test_matmul_batched_broadcast():
    # [2, 1, 4, 8] @ [3, 8, 5] -> [2, 3, 4, 5]
    n = node("MatMul", [t((2, 1, 4, 8)), t((3, 8, 5))], [t((2, 3, 4, 5))])
    c = op_cost(n)
    assert c.flops == 2 * 6 * 4 * 8 * 5
    assert c.backward_flops == 2 * c.flops
    assert c.weight_grad_flops == 0
    assert c.saved_inputs == (0, 1)
    assert c.kind == "compute" and not c.estimated


def test_matmul_with_weight_parameter():
    n = node("MatMul", [t((4, 128, 512)), t((512, 2048))], [t((4, 128, 2048))], params={1})
    c = op_cost(n)
    assert c.flops == 2 * 4 * 128 * 512 * 2048
    assert c.backward_flops == 2 * c.flops
    assert c.weight_grad_flops == c.flops
    assert c.saved_inputs == (0,)


@pytest.mark.parametrize(
    ("a", "b", "out", "flops"),
    [
        ((8,), (8,), (), 2 * 8),
        ((8,), (8, 5), (5,), 2 * 8 * 5),
        ((3, 4, 8), (8,), (3, 4), 2 * 12 * 8),
    ],
)
def test_matmul_one_d_operands(a, b, out, flops):
    assert op_cost(node("MatMul", [t(a), t(b)], [t(out)])).flops == flops


def test_matmul_dims():
    assert matmul_dims((2, 1, 4, 8), (3, 8, 5)) == ((2, 3), 4, 8, 5)
    assert matmul_dims((4, 8), (9, 5)) is None
    assert matmul_dims((2, 4, 8), (3, 8, 5)) is None


def test_matmul_unknown_inputs_uses_output_and_k():
    n = node("MatMul", [t((3, 4, 8)), t(None)], [t((3, 4, 5))])
    c = op_cost(n)
    assert c.flops == 2 * 60 * 8
    assert c.estimated


def test_matmul_fp16_bytes():
    n = node("MatMul", [t((64, 64), F16), t((64, 64), F16)], [t((64, 64), F16)])
    c = op_cost(n)
    assert c.bytes_read == 2 * 2 * 4096 and c.bytes_written == 2 * 4096


@pytest.mark.parametrize(
    ("equation", "shapes", "out", "flops"),
    [
        ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)], (2, 3, 5), 2 * 2 * 3 * 4 * 5),
        (
            "bhqd,bhkd->bhqk",
            [(2, 4, 8, 16), (2, 4, 10, 16)],
            (2, 4, 8, 10),
            2 * 2 * 4 * 8 * 16 * 10,
        ),
        ("...ij,...jk->...ik", [(2, 4, 8, 16), (4, 16, 3)], (2, 4, 8, 3), 2 * 2 * 4 * 8 * 16 * 3),
        ("ij,jk", [(3, 4), (4, 5)], (3, 5), 2 * 3 * 4 * 5),  # implicit output "ik"
        ("bi,bi->bi", [(4, 6), (4, 6)], (4, 6), 24),  # Hadamard: one multiply
        ("i,j->ij", [(3,), (5,)], (3, 5), 15),  # outer product
        ("ij->i", [(3, 5)], (3,), 15),  # row sums
        ("ij->ji", [(3, 5)], (5, 3), 0),  # transposition
        # three operands, left to right: (ij,jk->ik) then (ik,kl->il)
        ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)], (2, 5), 2 * 2 * 3 * 4 + 2 * 2 * 4 * 5),
    ],
)
def test_einsum_forms(equation, shapes, out, flops):
    n = node("Einsum", [t(s) for s in shapes], [t(out)], {"equation": equation})
    c = op_cost(n)
    assert c.flops == flops
    assert not c.estimated


def test_einsum_matches_matmul_and_kind():
    mm = op_cost(node("MatMul", [t((2, 3, 4)), t((2, 4, 5))], [t((2, 3, 5))]))
    es = op_cost(
        node(
            "Einsum",
            [t((2, 3, 4)), t((2, 4, 5))],
            [t((2, 3, 5))],
            {"equation": b"bij,bjk->bik"},  # onnx.helper returns bytes for strings
        )
    )
    assert (es.flops, es.backward_flops, es.kind) == (mm.flops, mm.backward_flops, "compute")
    transpose = op_cost(node("Einsum", [t((3, 5))], [t((5, 3))], {"equation": "ij->ji"}))
    assert transpose.kind == "memory"


def test_parse_einsum_ellipsis():
    operands, output, sizes = parse_einsum("...ij,...jk->...ik", [(2, 4, 8, 16), (4, 16, 3)])
    assert operands == [["@1", "@0", "i", "j"], ["@0", "j", "k"]]
    assert output == ["@1", "@0", "i", "k"]
    assert sizes == {"@1": 2, "@0": 4, "i": 8, "j": 16, "k": 3}
    assert einsum_flops(operands, output, sizes) == 2 * 2 * 4 * 8 * 16 * 3
    assert parse_einsum("ij,jk->ik", [(3, 4)]) is None


def test_einsum_malformed_or_unknown_falls_back():
    bad = op_cost(node("Einsum", [t((3, 4))], [t((3,))], {"equation": "ijk->i"}))
    assert bad.estimated and bad.flops == 0
    missing = op_cost(node("Einsum", [t((3, 4))], [t((3,))]))
    assert missing.estimated
    unknown = op_cost(node("Einsum", [t((3, 4)), t(None)], [t((3, 5))], {"equation": "ij,jk->ik"}))
    assert unknown.estimated
    assert unknown.flops == 2 * 3 * 4 * 5  # k sized from the output shape


# --------------------------------------------------------------------------------------
# Pointwise
# --------------------------------------------------------------------------------------


def test_add_broadcast_bias():
    # activation [4, 16] + parameter bias [16]
    n = node("Add", [t((4, 16)), t((16,))], [t((4, 16))], params={1})
    c = op_cost(n)
    assert c.flops == 64
    assert c.bytes_read == 4 * (64 + 16) and c.bytes_written == 4 * 64
    assert c.backward_flops == 64
    assert c.weight_grad_flops == 64
    assert c.saved_inputs == () and not c.saves_output
    assert c.kind == "memory"


def test_add_output_unknown_uses_broadcast():
    c = op_cost(node("Add", [t((4, 1)), t((1, 16))], [t(None)]))
    assert c.flops == 64
    assert c.estimated  # the output bytes are unknown


@pytest.mark.parametrize(
    ("op", "fwd", "saved", "saves_output"),
    [
        ("Relu", 1, (), True),
        ("Sigmoid", 4, (), True),
        ("Tanh", 1, (), True),
        ("Erf", 1, (0,), False),
        ("Gelu", 5, (0,), False),
        ("LeakyRelu", 2, (0,), False),
        ("HardSigmoid", 4, (0,), False),
        ("HardSwish", 5, (0,), False),
        ("Exp", 1, (), True),
        ("Log", 1, (0,), False),
        ("Sqrt", 1, (), True),
        ("Neg", 1, (), False),
        ("Softplus", 3, (0,), False),
        ("Mish", 5, (0,), False),
        ("Elu", 4, (), True),
    ],
)
def test_unary_factors(op, fwd, saved, saves_output):
    n = node(op, [t((3, 5))], [t((3, 5))])
    c = op_cost(n)
    assert c.flops == fwd * 15
    assert c.backward_flops == POINTWISE[op].bwd * 15
    assert c.saved_inputs == saved and c.saves_output == saves_output
    assert c.bytes_read == c.bytes_written == 60
    assert c.kind == "memory" and not c.estimated


def test_gelu_tanh_approximation():
    c = op_cost(node("Gelu", [t((10,))], [t((10,))], {"approximate": "tanh"}))
    assert c.flops == GELU_TANH.fwd * 10


def test_mul_div_pow_save_inputs():
    for op in ("Mul", "Div", "Pow"):
        c = op_cost(node(op, [t((2, 3)), t((2, 3))], [t((2, 3))]))
        assert c.saved_inputs == (0, 1), op
    # a scalar constant needs no gradient, so x*0.5 keeps nothing for it
    c = op_cost(node("Mul", [t((2, 3)), t(())], [t((2, 3))], params={1}))
    assert c.saved_inputs == () and c.weight_grad_flops == 0
    assert c.backward_flops == POINTWISE["Mul"].bwd * 6


def test_where_and_clip():
    w = op_cost(node("Where", [t((4, 4), BOOL), t((4, 4)), t((4, 4))], [t((4, 4))]))
    assert w.flops == 16 and w.saved_inputs == (0,)
    assert w.bytes_read == 16 + 64 + 64
    c = op_cost(
        node("Clip", [t((4, 4)), t((), name="lo"), t((), name="hi")], [t((4, 4))], params={1, 2})
    )
    assert c.flops == 32 and c.saved_inputs == (0,)


def test_variadic_sum_mean_max():
    xs = [t((10,)) for _ in range(3)]
    assert op_cost(node("Sum", xs, [t((10,))])).flops == 20
    assert op_cost(node("Mean", xs, [t((10,))])).flops == 30
    mx = op_cost(node("Max", xs, [t((10,))]))
    assert mx.flops == 20 and mx.saved_inputs == (0, 1, 2)


def test_comparisons_and_int_arithmetic_have_no_backward():
    eq = op_cost(node("Equal", [t((5,)), t((5,))], [t((5,), BOOL)]))
    assert eq.flops == 5 and eq.backward_flops == 0 and eq.saved_inputs == ()
    # shape arithmetic on int64: no gradient at all
    add = op_cost(node("Add", [t((1,), INT64), t((1,), INT64)], [t((1,), INT64)]))
    assert add.backward_flops == 0
    mul = op_cost(node("Mul", [t((1,), INT64), t((1,), INT64)], [t((1,), INT64)]))
    assert mul.saved_inputs == ()


def test_prelu_slope_is_a_weight():
    c = op_cost(node("PRelu", [t((2, 8, 4, 4)), t((8, 1, 1))], [t((2, 8, 4, 4))], params={1}))
    assert c.flops == 2 * 256
    assert c.saved_inputs == (0,)
    assert 0 < c.weight_grad_flops <= c.backward_flops


# --------------------------------------------------------------------------------------
# Softmax, norms
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax(op):
    c = op_cost(node(op, [t((2, 4, 8, 8))], [t((2, 4, 8, 8))], {"axis": -1}))
    assert c.flops == 5 * 512
    assert c.backward_flops == 4 * 512
    assert c.saves_output and c.saved_inputs == ()


def test_layer_norm():
    n = node(
        "LayerNormalization",
        [t((4, 16, 64)), t((64,)), t((64,))],
        [t((4, 16, 64))],
        {"axis": -1, "epsilon": 1e-5},
        params={1, 2},
    )
    c = op_cost(n)
    numel = 4 * 16 * 64
    assert c.flops == NORM_FWD * numel
    assert c.backward_flops == NORM_BWD * numel
    assert c.weight_grad_flops == NORM_WGRAD * numel
    assert c.saved_inputs == (0,)
    assert c.bytes_read == 4 * (numel + 128)


@pytest.mark.parametrize("op", ["GroupNormalization", "InstanceNormalization"])
def test_group_instance_norm(op):
    c = op_cost(node(op, [t((2, 8, 4, 4)), t((8,)), t((8,))], [t((2, 8, 4, 4))], params={1, 2}))
    assert c.flops == NORM_FWD * 256
    assert c.saved_inputs == (0,)


def test_batch_norm_inference_and_training():
    ins = [t((2, 8, 4, 4)), t((8,)), t((8,)), t((8,)), t((8,))]
    infer = op_cost(node("BatchNormalization", ins, [t((2, 8, 4, 4))], params={1, 2, 3, 4}))
    train = op_cost(
        node(
            "BatchNormalization",
            ins,
            [t((2, 8, 4, 4))],
            {"training_mode": 1},
            params={1, 2, 3, 4},
        )
    )
    assert infer.flops == 4 * 256
    assert train.flops == 7 * 256
    assert infer.bytes_read == 4 * (256 + 32)
    assert infer.weight_grad_flops == NORM_WGRAD * 256


def test_lrn():
    c = op_cost(node("LRN", [t((1, 96, 55, 55))], [t((1, 96, 55, 55))], {"size": 5}))
    assert c.flops == 10 * 96 * 55 * 55


# --------------------------------------------------------------------------------------
# Pooling, reductions
# --------------------------------------------------------------------------------------


def test_max_pool():
    n = node(
        "MaxPool",
        [t((1, 64, 55, 55))],
        [t((1, 64, 27, 27))],
        {"kernel_shape": [3, 3], "strides": [2, 2]},
    )
    c = op_cost(n)
    assert c.flops == 64 * 27 * 27 * 9
    assert c.backward_flops == 64 * 27 * 27
    assert c.saved_inputs == (0,)
    assert c.kind == "memory"
    derived = op_cost(node("MaxPool", n.inputs, [t(None)], n.attrs))
    assert derived.flops == c.flops and derived.estimated


def test_average_pool_saves_nothing():
    c = op_cost(
        node(
            "AveragePool",
            [t((1, 8, 4, 4))],
            [t((1, 8, 2, 2))],
            {"kernel_shape": [2, 2], "strides": [2, 2]},
        )
    )
    assert c.flops == 32 * 4 and c.backward_flops == 32 * 4 and c.saved_inputs == ()


def test_global_pools():
    ga = op_cost(node("GlobalAveragePool", [t((1, 2048, 7, 7))], [t((1, 2048, 1, 1))]))
    assert ga.flops == 2048 * 49 and ga.saved_inputs == ()
    gm = op_cost(node("GlobalMaxPool", [t((1, 2048, 7, 7))], [t((1, 2048, 1, 1))]))
    assert gm.flops == 2048 * 49 and gm.saved_inputs == (0,)


@pytest.mark.parametrize(
    ("op", "flops", "saves"),
    [
        ("ReduceSum", 60, False),
        ("ReduceMean", 60 + 3, False),
        ("ReduceMax", 60, True),
        ("ReduceMin", 60, True),
        ("ReduceProd", 60, True),
        ("ReduceL2", 120 + 3, True),
    ],
)
def test_reductions(op, flops, saves):
    c = op_cost(node(op, [t((3, 4, 5))], [t((3, 1, 1))], {"axes": [1, 2], "keepdims": 1}))
    assert c.flops == flops
    assert c.saves_output == saves
    assert c.saved_inputs == ((0,) if saves else ())


def test_argmax_topk_cumsum():
    am = op_cost(node("ArgMax", [t((4, 10))], [t((4, 1), INT64)], {"axis": 1}))
    assert am.flops == 40 and am.backward_flops == 0
    tk = op_cost(
        node("TopK", [t((4, 10)), t((1,), INT64)], [t((4, 3)), t((4, 3), INT64)], {"axis": 1})
    )
    assert tk.flops == 40 * 2  # ceil(log2(3)) = 2
    assert tk.bytes_written == 4 * 12 + 8 * 12
    tk0 = op_cost(
        node("TopK", [t((10, 4)), t((1,), INT64)], [t((3, 4)), t((3, 4), INT64)], {"axis": 0})
    )
    assert tk0.flops == 40 * 2 and not tk0.estimated
    cs = op_cost(node("CumSum", [t((4, 10)), t((), INT64)], [t((4, 10))]))
    assert cs.flops == 40 and cs.backward_flops == 40


# --------------------------------------------------------------------------------------
# Data movement, metadata, embedding
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op", ["Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Size", "Constant"]
)
def test_free_ops(op):
    c = op_cost(node(op, [t((2, 3, 4)), t((2,), INT64)], [t((6, 4))]))
    assert c == OpCost(kind="free")


def test_dropout_inference_is_free_training_is_not():
    assert op_cost(node("Dropout", [t((4, 4)), t(())], [t((4, 4))])).kind == "free"
    train = op_cost(node("Dropout", [t((4, 4)), t(()), t((), BOOL)], [t((4, 4)), t((4, 4), BOOL)]))
    assert train.kind == "memory" and train.flops == 32
    assert train.bytes_written == 64 + 16
    assert train.saved_inputs == ()


@pytest.mark.parametrize("op", ["Transpose", "Cast", "Pad"])
def test_copy_ops(op):
    c = op_cost(node(op, [t((2, 3, 4))], [t((4, 3, 2))]))
    assert c.flops == 0 and c.backward_flops == 0
    assert c.bytes_read == c.bytes_written == 96
    assert c.kind == "memory" and c.saved_inputs == ()


def test_concat_split():
    c = op_cost(node("Concat", [t((2, 3)), t((2, 5))], [t((2, 8))], {"axis": 1}))
    assert (c.bytes_read, c.bytes_written, c.flops) == (64, 64, 0)
    s = op_cost(node("Split", [t((2, 8))], [t((2, 3)), t((2, 5))], {"axis": 1}))
    assert (s.bytes_read, s.bytes_written) == (64, 64)


def test_slice_reads_only_the_slice():
    ints = [t((1,), INT64) for _ in range(3)]
    c = op_cost(node("Slice", [t((100, 10)), *ints], [t((5, 10))]))
    assert c.bytes_read == 4 * 50 + 3 * 8
    assert c.bytes_written == 200


def test_expand_and_tile():
    c = op_cost(node("Expand", [t((1, 8)), t((2,), INT64)], [t((16, 8))]))
    assert c.bytes_read == 32 + 16 and c.bytes_written == 512
    assert c.backward_flops == 128 and c.flops == 0
    tl = op_cost(node("Tile", [t((2, 8)), t((2,), INT64)], [t((4, 16))]))
    assert tl.bytes_written == 256


def test_embedding_gather():
    # vocab 50000 x hidden 256 table, batch 2 x 7 ids
    n = node(
        "Gather",
        [t((50000, 256)), t((2, 7), INT64)],
        [t((2, 7, 256))],
        {"axis": 0},
        params={0},
    )
    c = op_cost(n)
    rows = 14 * 256 * 4
    assert c.bytes_read == rows + 14 * 8  # rows read + ids, not the whole table
    assert c.bytes_written == rows
    assert c.flops == 0
    assert c.backward_flops == c.weight_grad_flops == 14 * 256  # scatter-add
    assert c.saved_inputs == (1,)
    assert c.kind == "memory"


def test_gather_of_activation_and_int_shape():
    act = op_cost(node("Gather", [t((4, 10, 8)), t((), INT64)], [t((4, 8))], {"axis": 1}))
    assert act.bytes_read == 4 * 32 + 8
    assert act.weight_grad_flops == 0 and act.backward_flops == 32
    shape = op_cost(node("Gather", [t((4,), INT64), t((), INT64)], [t((), INT64)]))
    assert shape.backward_flops == 0 and shape.saved_inputs == ()


def test_scatter_nd():
    c = op_cost(node("ScatterND", [t((8, 4)), t((2, 1), INT64), t((2, 4))], [t((8, 4))]))
    assert c.flops == 0
    assert c.bytes_read == 128 + 16 + 32 and c.bytes_written == 128
    assert c.saved_inputs == (1,)
    add = op_cost(
        node(
            "ScatterND", [t((8, 4)), t((2, 1), INT64), t((2, 4))], [t((8, 4))], {"reduction": "add"}
        )
    )
    assert add.flops == 8


def test_constant_of_shape_range_trilu_resize():
    cos = op_cost(node("ConstantOfShape", [t((2,), INT64)], [t((3, 4))]))
    assert cos.bytes_written == 48 and cos.flops == 0 and cos.kind == "memory"
    rg = op_cost(node("Range", [t((), INT64)] * 3, [t((10,), INT64)]))
    assert rg.flops == 10
    tri = op_cost(node("Trilu", [t((4, 4))], [t((4, 4))]))
    assert tri.flops == 16
    nearest = op_cost(node("Resize", [t((1, 3, 8, 8)), None, t((4,))], [t((1, 3, 16, 16))]))
    assert nearest.flops == 0
    linear = op_cost(
        node("Resize", [t((1, 3, 8, 8)), None, t((4,))], [t((1, 3, 16, 16))], {"mode": "linear"})
    )
    assert linear.flops == 2 * 4 * 768


# --------------------------------------------------------------------------------------
# Unknown ops, unknown shapes, domains
# --------------------------------------------------------------------------------------


def test_unknown_op_is_a_byte_estimate():
    n = node("FancyOp", [t((4, 4)), None, t(None)], [t((2, 4)), t(None)])
    assert op_cost(n) == OpCost(bytes_read=64, bytes_written=32, kind="memory", estimated=True)


def test_non_default_domain_is_unknown():
    n = node("Gelu", [t((4, 4))], [t((4, 4))], domain="com.microsoft")
    c = op_cost(n)
    assert c.estimated and c.flops == 0
    assert not op_cost(node("Gelu", [t((4, 4))], [t((4, 4))], domain="ai.onnx")).estimated


@pytest.mark.parametrize("op", sorted(KNOWN_OPS))
def test_every_known_op_survives_unknown_shapes(op):
    n = node(op, [t(None), t(None), t(None)], [t(None)])
    c = OP_COSTS[op](n)
    assert min(c.flops, c.bytes_read, c.bytes_written, c.backward_flops) >= 0
    assert c.kind == "free" or c.estimated or c.bytes_moved == 0
    # and with no inputs or outputs at all
    empty = OP_COSTS[op](node(op, [], []))
    assert empty.flops >= 0


def test_op_cost_never_raises_on_garbage_attributes():
    n = node(
        "Conv",
        [t((1, 3, 8, 8)), t(None)],
        [t(None)],
        {"kernel_shape": "oops", "strides": None, "group": 0},
    )
    c = op_cost(n)
    assert c.estimated


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------

dims = st.integers(min_value=1, max_value=64)


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(min_value=1, max_value=16),
    m=dims,
    k=st.integers(min_value=2, max_value=64),  # a 1x1 weight would count as a constant
    n=dims,
    weight=st.booleans(),
)
def test_matmul_flops_linear_in_batch(batch, m, k, n, weight):
    def cost(b):
        params = {1} if weight else set()
        return op_cost(node("MatMul", [t((b, m, k)), t((k, n))], [t((b, m, n))], params=params))

    one, many = cost(1), cost(batch)
    assert many.flops == batch * one.flops == 2 * batch * m * k * n
    assert many.backward_flops == 2 * many.flops
    assert many.weight_grad_flops == (many.flops if weight else 0)


shapes = st.one_of(
    st.none(), st.lists(st.integers(min_value=0, max_value=6), max_size=4).map(tuple)
)
tensors = st.one_of(
    st.none(),
    st.builds(
        TensorInfo,
        name=st.just("x"),
        shape=shapes,
        dtype=st.sampled_from([FLOAT, INT64, BOOL, F16]),
    ),
)
attr_values = st.one_of(
    st.integers(min_value=-3, max_value=4),
    st.lists(st.integers(min_value=-1, max_value=4), max_size=8),
    st.sampled_from(["ij,jk->ik", "...i,...i", "ii->", "tanh", "linear", b"VALID", "bad"]),
)
attr_names = st.sampled_from(
    [
        "axis",
        "kernel_shape",
        "strides",
        "pads",
        "dilations",
        "group",
        "transA",
        "transB",
        "equation",
        "approximate",
        "mode",
        "auto_pad",
        "size",
        "ceil_mode",
        "training_mode",
    ]
)


@settings(max_examples=400, deadline=None)
@given(
    op=st.sampled_from(sorted(KNOWN_OPS)),
    inputs=st.lists(tensors, max_size=5),
    outputs=st.lists(tensors.filter(lambda x: x is not None), max_size=3),
    attrs=st.dictionaries(attr_names, attr_values, max_size=4),
    params=st.sets(st.integers(min_value=0, max_value=4), max_size=3),
)
def test_every_known_op_returns_non_negative_fields(op, inputs, outputs, attrs, params):
    c = OP_COSTS[op](node(op, inputs, outputs, attrs, params))
    assert c.flops >= 0 and c.bytes_read >= 0 and c.bytes_written >= 0
    assert 0 <= c.weight_grad_flops <= c.backward_flops
    assert c.kind in ("compute", "memory", "free")
    assert all(0 <= i < len(inputs) and i not in params for i in c.saved_inputs)
    for field in ("flops", "bytes_read", "bytes_written", "backward_flops", "weight_grad_flops"):
        assert isinstance(getattr(c, field), int), field
