"""The fused output layer + cross-entropy (evonas.training.tasks.losses) and the tasks' `head_loss_sum`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evonas.training.tasks import get_task
from evonas.training.tasks.base import Batch, Task
from evonas.training.tasks.losses import linear_cross_entropy_sum


def _inputs(n: int = 70, hidden: int = 12, vocab: int = 29, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g, requires_grad=True)
    w = (torch.randn(vocab, hidden, generator=g) * 0.5).requires_grad_()
    b = (torch.randn(vocab, generator=g) * 0.1).requires_grad_()
    y = torch.randint(0, vocab, (n,), generator=g)
    return h, w, b, y


def test_values_and_gradients_match_linear_then_cross_entropy():
    h, w, b, y = _inputs()
    ref = F.cross_entropy(F.linear(h, w, b), y, reduction="sum")
    ref_grads = torch.autograd.grad(ref, (h, w, b))
    out = linear_cross_entropy_sum(h, w, b, y)
    grads = torch.autograd.grad(out, (h, w, b))
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-5)
    for name, got, want in zip("hwb", grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=f"gradient of {name} differs")


def test_upstream_gradient_scales_the_result_and_weights_may_be_shared():
    """A tied output layer (the embedding matrix) gets the gradients of both uses, as with autograd's own ops."""
    h0, w, b, y = _inputs(n=40, hidden=8, vocab=11)
    ids = torch.randint(0, 11, (40,), generator=torch.Generator().manual_seed(1))

    def loss(fused: bool) -> torch.Tensor:
        hidden = torch.tanh(F.embedding(ids, w) + h0)  # w used as embedding and as output layer
        if fused:
            return 0.5 * linear_cross_entropy_sum(hidden, w, b, y)
        return 0.5 * F.cross_entropy(F.linear(hidden, w, b), y, reduction="sum")

    want = torch.autograd.grad(loss(False), (h0, w, b))
    got = torch.autograd.grad(loss(True), (h0, w, b))
    for name, g, r in zip(("h", "tied w", "b"), got, want, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6, msg=f"gradient of {name} differs")


def test_without_gradients_it_gives_the_same_value():
    h, w, b, y = _inputs()
    with_grad = linear_cross_entropy_sum(h, w, b, y)
    with torch.no_grad():
        plain = linear_cross_entropy_sum(h, w, b, y)
    with torch.inference_mode():
        inference = linear_cross_entropy_sum(h, w, b, y)
    assert not plain.requires_grad
    assert float(plain) == float(with_grad) == float(inference)


def test_a_retained_graph_can_be_differentiated_twice():
    h, w, b, y = _inputs()
    out = linear_cross_entropy_sum(h, w, b, y)
    first = torch.autograd.grad(out, w, retain_graph=True)[0]
    second = torch.autograd.grad(out, w)[0]
    assert torch.equal(first, second)


@pytest.mark.parametrize(("h", "w", "y"), [((5, 4), (7, 3), (5,)), ((5, 4), (7, 4), (6,)), ((2, 5, 4), (7, 4), (10,))])
def test_mismatched_shapes_are_a_value_error_naming_them(h, w, y):
    with pytest.raises(ValueError, match="expected hidden"):
        linear_cross_entropy_sum(torch.zeros(h), torch.zeros(w), torch.zeros(w[0]), torch.zeros(y, dtype=torch.long))


def test_token_task_head_loss_equals_its_loss_of_the_logits():
    task = get_task("synthetic")
    batch = next(iter(task.batches("valid", 4, 10)))
    g = torch.Generator().manual_seed(0)
    decoder = nn.Linear(16, task.n_outputs)
    hidden = torch.randn(10, 4, 16, generator=g)
    total, count = task.head_loss_sum(hidden, decoder, batch)
    ref_total, ref_count = task.loss_sum(decoder(hidden), batch)
    assert float(count) == float(ref_count) == 40
    assert float(total) == pytest.approx(float(ref_total), rel=1e-6)


def test_the_base_task_head_applies_the_output_layer_then_its_loss():
    class Sum(Task):
        def batches(self, split, batch_size, bptt, rng=None):
            return iter(())

        def loss_sum(self, logits, batch):
            return logits.sum(), torch.tensor(float(logits.numel()))

    decoder = nn.Linear(3, 2)
    hidden = torch.randn(4, 3)
    total, count = Sum().head_loss_sum(hidden, decoder, Batch(hidden, hidden))
    assert torch.equal(total, decoder(hidden).sum()) and float(count) == 8
