"""Schedules at known steps, weight-decay grouping, and the Muon optimizer."""

import math

import pytest
import torch
from train_support import one_thread

from slmkit.errors import SlmError
from slmkit.model import ModelConfig, Transformer
from slmkit.train.config import TrainConfig
from slmkit.train.optim import (
    Muon,
    adamw_param_groups,
    build_optimizer,
    parameter_roles,
    zeropower_via_newtonschulz5,
)
from slmkit.train.schedule import lr_factor

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


def small_model(**changes) -> Transformer:
    values = dict(vocab_size=64, context_length=16, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_mlp=48)
    values.update(changes)
    return Transformer(ModelConfig(**values))


@pytest.mark.parametrize("schedule, step, expected", [
    ("cosine", 0, 0.1), ("cosine", 4, 0.5), ("cosine", 9, 1.0), ("cosine", 10, 1.0), ("cosine", 60, 0.55),
    ("cosine", 110, 0.1), ("cosine", 500, 0.1),
    ("linear", 35, 1 - 0.9 * 0.25), ("linear", 60, 0.55), ("linear", 110, 0.1),
    ("wsd", 50, 1.0), ("wsd", 88, 1.0), ("wsd", 99, 0.55), ("wsd", 110, 0.1),
    ("constant", 5, 0.6), ("constant", 100, 1.0),
])
def test_schedule_values_at_known_steps(schedule, step, expected):
    config = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110, schedule=schedule, decay_fraction=0.2)
    assert lr_factor(config, step) == pytest.approx(expected, abs=1e-12)


def test_cosine_midpoint_is_halfway_between_peak_and_floor():
    config = TrainConfig(lr=3e-3, warmup_steps=0, max_steps=1000)  # min_lr defaults to lr / 10
    assert lr_factor(config, 500) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_weight_decay_only_on_matrices_not_norms_biases_or_embeddings():
    model = small_model(norm="layernorm", norm_bias=True, attention_bias=True, tie_embeddings=False,
                        position="learned", mlp="gelu")
    groups = {g["name"]: g for g in adamw_param_groups(model, 0.1)}
    decayed = {id(p) for p in groups["decay"]["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    for pid, name in names.items():
        is_embedding = name in ("embed.weight", "pos_embed.weight")
        should_decay = name.endswith("weight") and model.get_parameter(name).ndim == 2 and not is_embedding
        assert (pid in decayed) == should_decay, name
    assert id(model.lm_head.weight) in decayed  # an untied head is a matrix
    total = sum(p.numel() for g in groups.values() for p in g["params"])
    assert total == model.num_parameters()


def test_tied_head_is_grouped_once_as_an_embedding():
    model = small_model(tie_embeddings=True)
    roles = parameter_roles(model)
    assert [n for n, _ in roles["embedding"]] == ["embed.weight"] and roles["head"] == []
    assert sum(p.numel() for ps in roles.values() for _, p in ps) == model.num_parameters()


def test_newton_schulz_gives_a_nearly_orthogonal_matrix():
    torch.manual_seed(0)
    g = torch.randn(24, 40)
    x = zeropower_via_newtonschulz5(g)
    singular = torch.linalg.svdvals(x)
    assert singular.min() > 0.6 and singular.max() < 1.25  # the quintic's band around 1
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    cosine = (x * (u @ vh)).sum() / (x.norm() * (u @ vh).norm())
    assert cosine > 0.95  # close to U V^T, the exact orthogonalisation


def test_muon_first_step_moves_weights_by_the_orthogonalised_gradient():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(32, 16))
    before = p.detach().clone()
    p.grad = torch.randn(32, 16)
    Muon([p], lr=0.1, momentum=0.95).step()
    expected = before - 0.1 * math.sqrt(32 / 16) * zeropower_via_newtonschulz5(p.grad)
    torch.testing.assert_close(p.detach(), expected, atol=1e-5, rtol=1e-5)


def test_muon_fits_a_linear_map():
    torch.manual_seed(0)
    target = torch.randn(16, 32) / 4
    inputs = torch.randn(256, 32)
    weight = torch.nn.Parameter(torch.zeros(16, 32))
    optimizer = Muon([weight], lr=0.05, momentum=0.9)
    losses = []
    for _ in range(60):
        loss = ((inputs @ weight.T - inputs @ target.T) ** 2).mean()
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.05 * losses[0]


def test_muon_takes_hidden_matrices_and_adamw_the_rest():
    model = small_model(tie_embeddings=False)
    optimizer = build_optimizer(model, TrainConfig(optimizer="muon"))
    muon, adam = optimizer.optimizers
    assert isinstance(muon, Muon) and isinstance(adam, torch.optim.AdamW)
    muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}
    block_matrices = {id(p) for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2}
    assert muon_ids == block_matrices
    adam_ids = {id(p) for g in adam.param_groups for p in g["params"]}
    assert id(model.embed.weight) in adam_ids and id(model.lm_head.weight) in adam_ids


def test_train_config_refuses_unknown_keys_and_bad_values():
    with pytest.raises(SlmError, match="did you mean 'max_steps'"):
        TrainConfig.from_dict({"max_step": 10})
    with pytest.raises(SlmError, match="train.lr = -1"):
        TrainConfig(lr=-1).validate()
    with pytest.raises(SlmError, match="train.schedule = 'cosin'"):
        TrainConfig(schedule="cosin").validate()
    with pytest.raises(SlmError, match="train.min_lr"):
        TrainConfig(lr=1e-3, min_lr=1e-2).validate()


def test_time_budget_drives_the_decay_but_not_the_warmup():
    config = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=1_000_000, schedule="cosine")
    assert lr_factor(config, 4, time_fraction=0.9) == pytest.approx(0.5)  # warmup counts steps
    assert lr_factor(config, 50, time_fraction=0.5) == pytest.approx(0.55)
    assert lr_factor(config, 50, time_fraction=1.0) == pytest.approx(0.1)
    wsd = config.replace(schedule="wsd", decay_fraction=0.2)
    assert lr_factor(wsd, 50, time_fraction=0.7) == 1.0 and lr_factor(wsd, 50, time_fraction=0.9) == pytest.approx(0.55)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_adamw_on_cpu_is_the_fused_kernel_and_steps_like_the_foreach_one(optimizer):
    torch.manual_seed(0)
    model = small_model()
    twin = small_model()
    twin.load_state_dict(model.state_dict())
    config = TrainConfig(lr=1e-2, weight_decay=0.1, optimizer=optimizer)
    fused = build_optimizer(model, config, "cpu")
    adam = fused.optimizers[-1]
    assert adam.defaults["fused"] is True
    reference = torch.optim.AdamW(
        [{**{k: v for k, v in g.items() if k != "params"}, "params": [dict(twin.named_parameters())[n]
                                                                       for n in names]}
         for g, names in zip(adam.param_groups, _group_names(model, adam), strict=True)],
        foreach=True)
    inputs = torch.randint(0, 64, (2, 16))
    for _ in range(3):
        for net, opt in ((model, adam), (twin, reference)):
            opt.zero_grad()
            net(inputs).float().square().mean().backward()
            opt.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        if any(p is r for g in adam.param_groups for r in g["params"]):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def _group_names(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]
