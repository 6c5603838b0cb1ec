"""The flat optimizer step (evonas.training.optim) computes exactly what PyTorch's optimizers do, and what its
gradient clipping does up to the order the norm is summed in."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evonas.cells.library import resolve
from evonas.nn.model import CellModel
from evonas.training.optim import FlatAdam, FlatParams, FlatSGD, flatten


def _model(cell: str = "lstm", seed: int = 0, **kw) -> CellModel:
    torch.manual_seed(seed)
    return CellModel(resolve(cell), "tokens", 11, 11, 8, tie=True, **kw)


def _loss(model: nn.Module, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 11, (6, 3), generator=g)
    y = torch.randint(0, 11, (6, 3), generator=g)
    logits, _ = model(x)
    return nn.functional.cross_entropy(logits.reshape(-1, 11), y.reshape(-1)) * 20  # large: clipping acts


def _train_torch(model: nn.Module, steps: int, optimizer: str, clip: float, wd: float) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.SGD(params, lr=0.1, weight_decay=wd, foreach=True) if optimizer == "sgd"
           else torch.optim.Adam(params, lr=0.05, weight_decay=wd, foreach=True))
    norms = []
    for step in range(steps):
        loss = _loss(model, step)
        for p in params:
            p.grad = None
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)))
        opt.step()
    return norms


def _train_flat(model: nn.Module, steps: int, optimizer: str, clip: float, wd: float) -> list[float]:
    flat = flatten(model)
    opt = FlatSGD(flat, lr=0.1, weight_decay=wd) if optimizer == "sgd" else FlatAdam(flat, lr=0.05, weight_decay=wd)
    norms = []
    for step in range(steps):
        loss = _loss(model, step)
        flat.zero_grad()
        loss.backward()
        norms.append(float(flat.clip_grad_norm_(clip)))
        opt.step()
    return norms


CELLS = ["lstm", "gru", "Tanh(Add(MM(x),Mult(Sigmoid(MM(h_prev)),MM(h_prev))))"]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(("optimizer", "wd"), [("adam", 0.0), ("adam", 1e-3), ("sgd", 1e-3)])
def test_flat_step_equals_torch_optimizer_bit_for_bit(cell, optimizer, wd):
    a, b = _model(cell), _model(cell)
    norms_a = _train_torch(a, 6, optimizer, float("inf"), wd)
    norms_b = _train_flat(b, 6, optimizer, float("inf"), wd)
    assert norms_a == pytest.approx(norms_b, rel=1e-6), "the gradient norms differ beyond summation order"
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), f"{name} differs after 6 steps"


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(("optimizer", "clip"), [("adam", 1.0), ("adam", 0.5), ("sgd", 1.0)])
def test_flat_clipping_equals_torch_clipping_up_to_summation_order(cell, optimizer, clip):
    a, b = _model(cell), _model(cell)
    norms_a = _train_torch(a, 6, optimizer, clip, 0.0)
    norms_b = _train_flat(b, 6, optimizer, clip, 0.0)
    assert max(norms_a) > clip, "the test should make clipping act"
    assert norms_a == pytest.approx(norms_b, rel=1e-5), "the gradient norms before clipping differ"
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pb, pa, rtol=1e-4, atol=1e-6, msg=f"{name} differs after 6 clipped steps")


def test_parameters_and_gradients_are_views_of_the_buffers_with_tied_weights_once():
    model = _model()
    flat = flatten(model)
    params = list(model.parameters())  # tied decoder/encoder weight listed once
    assert flat.data.numel() == sum(p.numel() for p in params)
    assert all(p.untyped_storage().data_ptr() == flat.data.untyped_storage().data_ptr() for p in params)
    _loss(model, 0).backward()
    assert flat.grad.abs().sum() > 0
    assert sum(float(p.grad.abs().sum()) for p in params) == pytest.approx(float(flat.grad.abs().sum()), rel=1e-6)
    flat.zero_grad()
    assert all(p.grad is not None and not p.grad.any() for p in params)


def test_the_fused_lstm_reads_its_stacked_weights_without_copies_and_gets_the_same_gradients():
    plain, flat_model = _model(), _model()
    flatten(flat_model)
    cell = flat_model.cells[0]
    assert cell._aliased_stacks() is not None, "flatten should hand the fused LSTM its stacked weights"
    assert cell.stacked[0].shape == (4 * 8, 8)
    _loss(plain, 1).backward()
    _loss(flat_model, 1).backward()
    for (name, pa), pb in zip(plain.named_parameters(), flat_model.parameters(), strict=True):
        assert torch.equal(pa.grad, pb.grad), f"gradient of {name} differs"


def test_a_replaced_parameter_makes_the_fused_cell_stack_copies_again():
    model = _model()
    flatten(model)
    cell = model.cells[0]
    with torch.no_grad():
        cell.mm[0].weight.data = cell.mm[0].weight.data.clone() + 1.0
    assert cell._aliased_stacks() is None
    reference = _model()
    reference.load_state_dict(model.state_dict())
    out, _ = model(torch.arange(6).view(3, 2))
    ref, _ = reference(torch.arange(6).view(3, 2))
    assert torch.equal(out, ref), "after the alias broke, the forward must use the module's own weights"


def test_weight_drop_keeps_the_copying_path():
    model = _model(dropout_w=0.5)
    assert model.cells[0].adjacent_params() == []
    flatten(model)
    assert model.cells[0].stacked is None
    _loss(model, 0).backward()


def test_adam_continues_from_a_torch_adam_state_dict_as_torch_would():
    a, b = _model(seed=3), _model(seed=3)
    params_a = [p for p in a.parameters() if p.requires_grad]
    opt_a = torch.optim.Adam(params_a, lr=0.05, foreach=True)
    for step in range(3):
        opt_a.zero_grad(set_to_none=True)
        _loss(a, step).backward()
        opt_a.step()
    b.load_state_dict(a.state_dict())
    flat = flatten(b)
    opt_b = FlatAdam(flat, lr=0.05)
    opt_b.load_state_dict(opt_a.state_dict())
    assert opt_b.steps == 3
    for step in range(3, 6):
        opt_a.zero_grad(set_to_none=True)
        _loss(a, step).backward()
        opt_a.step()
        flat.zero_grad()
        _loss(b, step).backward()
        opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_flat_adam_state_round_trips_and_refuses_a_state_of_another_size():
    model = _model()
    opt = FlatAdam(flatten(model), lr=0.01)
    _loss(model, 0).backward()
    opt.step()
    again = FlatAdam(flatten(_model()), lr=0.01)
    again.load_state_dict(opt.state_dict())
    assert again.steps == 1 and torch.equal(again.exp_avg, opt.exp_avg)
    other = FlatAdam(flatten(_model("gru")), lr=0.01)
    with pytest.raises(ValueError, match="optimizer state holds"):
        other.load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="not an optimizer state"):
        other.load_state_dict({"something": 1})


def test_flat_params_refuse_no_parameters_and_mixed_dtypes():
    with pytest.raises(ValueError, match="at least one"):
        FlatParams([])
    with pytest.raises(ValueError, match="one dtype"):
        FlatParams([nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, dtype=torch.float64))])
