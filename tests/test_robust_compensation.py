"""Error compensation blocks: identity at start, counts, and gains on fresh variation samples."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hil.robust.analog import analog_layers
from hil.robust.compensation import (
    CompensationBlock,
    CompensationConfig,
    TrainCompensationConfig,
    add_compensation,
    block_params,
    compensation_blocks,
    overhead,
    train_compensation,
)
from hil.robust.montecarlo import monte_carlo_accuracy
from hil.robust.pipeline import digital_only_accuracy
from hil.robust.variation import VariationConfig


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 5),
    )


@pytest.mark.parametrize("cfg", [CompensationConfig(), CompensationConfig(source="output"),
                                 CompensationConfig(conv_kernel="1x1", affine=False)])
def test_new_blocks_change_nothing_and_counts_match(cfg) -> None:
    model = _cnn()
    x = torch.randn(3, 1, 8, 8)
    comp = add_compensation(model, [2, None, 1], cfg)
    torch.testing.assert_close(comp(x), model(x))
    # analog layers are the same three; the blocks are digital
    assert [n for n, _ in analog_layers(comp)] == ["0.layer", "2", "5.layer"]
    layers = [m for _, m in analog_layers(model)]
    expect = block_params(layers[0], 2, cfg) + block_params(layers[2], 1, cfg)
    assert sum(p.numel() for b in compensation_blocks(comp) for p in b.parameters()) == expect
    ov = overhead(comp, x)
    assert ov.compensation_params == expect
    assert ov.network_params == sum(p.numel() for p in model.parameters())
    assert ov.params_frac == pytest.approx(expect / ov.network_params)
    # the original model is untouched
    assert not compensation_blocks(model)


def test_overhead_macs_by_hand() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    comp = add_compensation(model, [1, 0])
    ov = overhead(comp, torch.randn(2, 8))
    assert ov.network_macs == 8 * 6 + 6 * 3
    # rank 1 on layer 0: 8 + 6 MACs, affine 6 and 3 (one per output)
    assert ov.compensation_macs == (8 + 6) + 6 + 3
    assert ov.compensation_params == (8 + 6) + 2 * 6 + 2 * 3
    assert ov.macs_frac == pytest.approx(ov.compensation_macs / ov.network_macs)


def test_block_errors() -> None:
    with pytest.raises(ValueError, match="empty block"):
        CompensationBlock(nn.Linear(3, 2), 0, CompensationConfig(affine=False))
    with pytest.raises(ValueError, match="placement has 1 entries"):
        add_compensation(nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2)), [1])
    with pytest.raises(ValueError, match="no CompensationBlock"):
        train_compensation(nn.Sequential(nn.Linear(3, 2)), torch.randn(4, 3), torch.zeros(4).long(),
                           VariationConfig(sigma=0.1))


def test_compensation_improves_accuracy_on_fresh_chips() -> None:
    """Blocks trained on sampled variations raise accuracy on chips never seen in training.

    Paired comparison: the same test chips (one seed, disjoint from the training seed)
    with and without blocks (the blocks add no analog layer, so chip i is the same
    draw in both).  The mean per-chip gain must exceed 3 standard errors.
    """
    from hil.datasets import load_digits_split
    from hil.robust.models import TrainConfig, digits_mlp, train_classifier

    d = load_digits_split()
    model = digits_mlp([64], seed=0)
    train_classifier(model, d.x_train, d.y_train, TrainConfig(epochs=15))
    var = VariationConfig(sigma=1.0)
    train_seed, test_seed, n = 1, 12345, 24
    base = monte_carlo_accuracy(model, d.x_test, d.y_test, var, n, seed=test_seed)
    comp = add_compensation(model, [2, 2])
    train_compensation(comp, d.x_train, d.y_train, var, TrainCompensationConfig(steps=150, seed=train_seed))
    after = monte_carlo_accuracy(comp, d.x_test, d.y_test, var, n, seed=test_seed)
    gain = torch.tensor(after.accuracies) - torch.tensor(base.accuracies)
    se = float(gain.std()) / math.sqrt(n)
    assert float(gain.mean()) > 3 * se, (base.accuracy_mean, after.accuracy_mean, se)
    # the main weights did not move
    for (_, a), (_, b) in zip(analog_layers(model), analog_layers(comp), strict=True):
        assert torch.equal(a.weight, b.weight)
    assert all(p.requires_grad for p in comp.parameters())  # flags restored
    assert 0.0 <= digital_only_accuracy(comp, d.x_test, d.y_test) <= 1.0


def test_convert_to_analog_leaves_the_compensation_blocks_digital() -> None:
    from hil.nn.convert import convert_to_analog

    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    comp = add_compensation(model, [2, 0])
    assert all(getattr(b, "hil_digital", False) for b in compensation_blocks(comp))
    converted = convert_to_analog(comp)
    analog = [n for n, m in converted.named_modules() if type(m).__name__.startswith("Analog")]
    assert analog == ["0.layer", "2.layer"]  # the blocks' A and B stay nn.Linear
    assert len(compensation_blocks(converted)) == 2


def test_cosine_schedule_changes_the_training_and_stays_seeded() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    var = VariationConfig(sigma=0.3)
    runs = {}
    for sched in ("constant", "cosine", "cosine"):
        m = add_compensation(model, [1, 1])
        cfg = TrainCompensationConfig(steps=20, batch_size=16, n_samples=2, lr=0.05, lr_schedule=sched)
        losses = train_compensation(m, x, y, var, cfg)
        params = torch.cat([p.detach().flatten() for b in compensation_blocks(m) for p in b.parameters()])
        if sched in runs:  # same seed, same result
            torch.testing.assert_close(params, runs[sched][1])
        runs[sched] = (losses, params)
    # the first step is taken at the full rate either way; after it the schedules differ
    assert runs["cosine"][0][:2] == runs["constant"][0][:2]
    assert not torch.allclose(runs["cosine"][1], runs["constant"][1])
