"""The fused, chunked output head + cross-entropy equals the plain F.cross_entropy."""

import pytest
import torch
import torch.nn.functional as F

from slmkit.model.config import ModelConfig
from slmkit.model.transformer import Transformer
from slmkit.train.loss import language_model_loss, linear_cross_entropy


def _reference(hidden, weight, targets, reduction="mean"):
    logits = (hidden @ weight.t()).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1,
                           reduction=reduction)


def _grads(fn, hidden, weight, targets, **kwargs):
    hidden = hidden.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    loss = fn(hidden, weight, targets, **kwargs)
    (loss * 1.7).backward()  # a non-unit upstream gradient
    return loss.detach(), hidden.grad, weight.grad


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk_rows", [7, 64, 4096])
def test_chunked_cross_entropy_equals_full_in_float32(reduction, chunk_rows):
    torch.manual_seed(0)
    hidden, weight = torch.randn(3, 40, 32), torch.randn(1000, 32) * 0.3
    targets = torch.randint(0, 1000, (3, 40))
    targets[0, :5] = -1  # ignored positions
    targets[2, -1] = -1
    expected = _grads(_reference, hidden, weight, targets, reduction=reduction)
    actual = _grads(linear_cross_entropy, hidden, weight, targets, reduction=reduction, chunk_rows=chunk_rows)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_ignored_targets_get_no_gradient_and_all_ignored_gives_nan_like_f_cross_entropy():
    hidden, weight = torch.randn(2, 6, 8), torch.randn(50, 8)
    targets = torch.randint(0, 50, (2, 6))
    targets[1] = -1
    _, grad_hidden, _ = _grads(linear_cross_entropy, hidden, weight, targets, chunk_rows=4)
    assert torch.all(grad_hidden[1] == 0) and torch.any(grad_hidden[0] != 0)
    all_ignored = torch.full((2, 6), -1)
    assert torch.isnan(linear_cross_entropy(hidden, weight, all_ignored))
    assert torch.isnan(_reference(hidden, weight, all_ignored))


def test_bf16_autocast_is_close_to_float32_reference():
    torch.manual_seed(0)
    hidden, weight = torch.randn(4, 64, 64), torch.randn(2000, 64) * 0.2
    targets = torch.randint(0, 2000, (4, 64))
    expected = _grads(_reference, hidden, weight, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = _grads(linear_cross_entropy, hidden, weight, targets, chunk_rows=100)
    assert actual[0].dtype == torch.float32 and actual[2].dtype == torch.float32
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-2, atol=1e-2)
    for a, e in zip(actual[1:], expected[1:]):
        assert (a - e).norm() / e.norm() < 2e-2


def _tiny_model(tie: bool) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=300, context_length=32, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2,
                         d_mlp=64, tie_embeddings=tie)
    return Transformer(config)


@pytest.mark.parametrize("tie", [True, False])
def test_language_model_loss_matches_full_logits_for_tied_and_untied_heads(tie):
    model = _tiny_model(tie)
    ids = torch.randint(0, 300, (3, 20))
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = -1
    loss = language_model_loss(model, ids, targets)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    logits = model(ids)
    expected = F.cross_entropy(logits.reshape(-1, 300), targets.reshape(-1), ignore_index=-1)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-5, msg=name)


def test_language_model_loss_without_grad_and_under_no_grad():
    model = _tiny_model(True)
    ids = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        loss = language_model_loss(model, ids, ids, reduction="sum")
        expected = F.cross_entropy(model(ids).reshape(-1, 300), ids.reshape(-1), reduction="sum")
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)


def test_language_model_loss_under_torch_compile_matches_eager():
    model = _tiny_model(True)
    ids = torch.randint(0, 300, (2, 16))
    eager = language_model_loss(model, ids, ids)
    eager.backward()
    eager_grad = model.embed.weight.grad.clone()
    model.zero_grad()
    compiled = torch.compile(language_model_loss)(torch.compile(model), ids, ids)
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.embed.weight.grad, eager_grad, rtol=1e-4, atol=1e-6)


def test_evaluation_under_no_grad_computes_no_gradients(monkeypatch):
    import slmkit.train.loss as loss_module

    asked = []
    original = loss_module._chunk_loss_and_grad

    def spy(*args):
        asked.append(args[-1])
        return original(*args)

    monkeypatch.setattr(loss_module, "_chunk_loss_and_grad", spy)
    model = _tiny_model(True)
    ids = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        loss = language_model_loss(model, ids, ids)
    assert asked == [False] and not loss.requires_grad
    language_model_loss(model, ids, ids).backward()
    assert asked[-1] is True and model.embed.weight.grad is not None
