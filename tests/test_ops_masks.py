"""The layer ops with the regularizers' masks (zoneout_h, zoneout_c, dropout_h) against the
float64 reference on every device: outputs and every gradient over the grid of cells, padded
and packed, both directions, each regularizer alone and both; float32 and fp16/bf16; gradcheck
and gradgradcheck with fixed masks; eval's shared zoneout row (row stride 0); one time step;
inference; bad masks."""
import pytest
import torch

from fused_rnn import functional

from checks import DEVICES
from fuzz_cases import check_unmodified, snapshot
from op_cases import CELLS, LOW_PRECISION, check_against_reference, make_case, nn_scaled

pytestmark = pytest.mark.usefixtures("poison_buffers")

REGULARIZERS = [("zoneout",), ("dropout",), ("zoneout", "dropout")]
REG_IDS = ["zoneout", "dropout", "both"]
SIZES = dict(H=37, I=11, B=4)  # as test_ops_numerics: a partial SIMD vector, no CUDA lane multiple


@pytest.mark.parametrize("masks", REGULARIZERS, ids=REG_IDS)
@pytest.mark.parametrize("packed,reverse", [(False, False), (True, False), (True, True)], ids=["padded", "packed",
                                                                                             "packed-rev"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("device", DEVICES)
def test_float64_matches_reference(device, cell, packed, reverse, masks):
    case = make_case(cell, packed=packed, reverse=reverse, device=device, masks=masks)
    assert any(bool((m == 0).any()) for m in case.masks.values()), "no unit masked: the test would see nothing"
    check_against_reference(case)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("device", DEVICES)
def test_float32_matches_reference(device, cell):
    case = make_case(cell, packed=True, dtype=torch.float32, device=device, masks=("zoneout", "dropout"), **SIZES)
    check_against_reference(case)


# Measured (Xeon, CPU): in bfloat16 this case's gradients are 2.5-4.5x as far from the float64
# truth as the same equations in plain bf16 PyTorch ops (input 0.043 against 0.017), past the
# 2x that check_against_reference allows; with 9 other seeds the worst ratio is 0.4-1.3, in
# float16 0.2-0.5, without the peephole, the layer norm or one of zoneout_c / dropout_h <= 1.7.
# Not understood yet: kept as a known failure (strict: it must be fixed to pass).
_BF16_OPEN = pytest.mark.xfail(strict=True, reason="bf16 peephole+LN+proj LSTM with zoneout_c and dropout_h: "
                                                   "gradients 2.5-4.5x plain bf16's error (seed 0)")


def _low_precision_params():
    return [pytest.param(cell, dtype, marks=_BF16_OPEN if (cell, dtype) == ("lstm_peephole_ln_proj", torch.bfloat16)
                         else ()) for cell in CELLS for dtype in LOW_PRECISION]


@pytest.mark.parametrize("cell,dtype", _low_precision_params())
@pytest.mark.parametrize("device", DEVICES)
def test_low_precision_matches_reference(device, cell, dtype):
    case = nn_scaled(make_case(cell, dtype=dtype, device=device, masks=("zoneout", "dropout"), **SIZES))
    check_against_reference(case, check_grads=cell != "rnn_relu")  # as test_ops_numerics


@pytest.mark.parametrize("cell", ["lstm", "lstm_peephole_ln_proj", "gru_ln", "rnn_tanh"])
@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_gradgradcheck(device, cell):
    case = make_case(cell, packed=True, reverse=True, device=device, T=4, B=3, H=4, masks=("zoneout", "dropout"))
    assert torch.autograd.gradcheck(case.function(), case.leaves())
    assert torch.autograd.gradgradcheck(case.function(), case.leaves())


@pytest.mark.parametrize("cell", ["lstm", "lstm_proj", "gru", "rnn_tanh"])
@pytest.mark.parametrize("device", DEVICES)
def test_eval_zoneout_expanded_and_strided_masks(device, cell):
    """Eval's zoneout: one row of p expanded over every step and row (row stride 0, nothing
    materialized per step); and a mask in a non-contiguous layout: both as the reference."""
    case = make_case(cell, device=device, masks=("zoneout",))
    for name, mask in case.masks.items():
        case.masks[name] = torch.full_like(mask[0, 0], 0.3).expand_as(mask)
    check_against_reference(case)
    case = make_case(cell, device=device, masks=("zoneout", "dropout"))
    case.masks = {name: mask.transpose(-1, -2).contiguous().transpose(-1, -2) for name, mask in case.masks.items()}
    assert not case.masks["dropout_h"].is_contiguous()
    check_against_reference(case)


@pytest.mark.parametrize("cell", ["lstm_ln", "gru", "rnn_relu"])
@pytest.mark.parametrize("device", DEVICES)
def test_one_step_and_inference(device, cell):
    """T = 1 with masks runs the layer op (the single-step ops take none); inference (no
    workspace) gives the training forward's results; the masks are not written to."""
    check_against_reference(make_case(cell, T=1, device=device, masks=("zoneout", "dropout")))
    case = make_case(cell, device=device, masks=("zoneout", "dropout"))
    before = snapshot(list(case.masks.values()))
    trained = case.run(functional)
    with torch.no_grad():
        inferred = case.run(functional)
    for a, b in zip(trained, inferred):
        assert torch.equal(a.detach(), b)
    check_unmodified(list(case.masks.values()), before, "the masks")


@pytest.mark.parametrize("device", DEVICES)
def test_bad_masks_are_refused_by_name(device):
    case = make_case("lstm", device=device, masks=("zoneout", "dropout"))
    bad = {"shape": lambda m: m[..., :-1], "dtype": lambda m: m.float(), "device": lambda m: m.to("meta")}
    for name in case.masks:
        for spoil in bad.values():
            masks = {**case.masks, name: spoil(case.masks[name])}
            with pytest.raises(RuntimeError, match=name):
                case.with_leaves(case.leaves(), masks).run(functional)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("device", DEVICES)
def test_single_step_zoneout_matches_reference(device, cell, dtype):
    """The single-step ops with zoneout's masks (the cells' regularizer) against one step of the
    reference layer with the same masks; hx given and omitted."""
    sizes = SIZES if dtype == torch.float32 else {}
    for hx in (True, False):
        case = make_case(cell, step=True, hx=hx, dtype=dtype, device=device, masks=("zoneout",), **sizes)
        check_against_reference(case)


@pytest.mark.parametrize("cell", ["lstm_peephole_ln_proj", "gru", "rnn_tanh"])
@pytest.mark.parametrize("device", DEVICES)
def test_single_step_zoneout_gradcheck(device, cell):
    """gradcheck and gradgradcheck of a step with zoneout (the eager call's C++ autograd node,
    and its double backward through the reference)."""
    case = make_case(cell, step=True, device=device, B=3, H=4, masks=("zoneout",))
    assert torch.autograd.gradcheck(case.function(), case.leaves())
    assert torch.autograd.gradgradcheck(case.function(), case.leaves())
