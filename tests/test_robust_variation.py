"""Variation model statistics and the vectorized Monte-Carlo path (hil.robust)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hil.robust.montecarlo import (
    fold,
    monte_carlo_accuracy,
    monte_carlo_logits,
    monte_carlo_view,
    summarize,
)
from hil.robust.variation import (
    VariationConfig,
    program_with_variation,
    sample_programmed_weights,
)


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_variation_config_json_round_trip() -> None:
    cfg = VariationConfig(sigma=0.3, additive_sigma=0.02, read_noise=0.01)
    assert VariationConfig.from_json(cfg.to_json()) == cfg
    assert cfg.with_sigma(0.5).sigma == 0.5 and cfg.with_sigma(0.5).read_noise == 0.01
    assert VariationConfig().is_zero and not cfg.is_zero
    with pytest.raises(ValueError):
        VariationConfig(sigma=-0.1)


def test_lognormal_statistics() -> None:
    # log(w'/w) = theta ~ N(0, sigma^2): check mean and std within 5 standard errors
    sigma, n = 0.3, 200 * 200
    w = torch.full((200, 200), 0.7)
    ws = sample_programmed_weights(w, VariationConfig(sigma=sigma), 1, _gen(0))[0]
    theta = torch.log(ws / w).double().flatten()
    assert abs(float(theta.mean())) < 5 * sigma / math.sqrt(n)
    assert abs(float(theta.std()) - sigma) < 5 * sigma / math.sqrt(2 * n)
    # multiplicative: the sign of every weight is kept
    wneg = -w
    assert bool((sample_programmed_weights(wneg, VariationConfig(sigma=sigma), 2, _gen(1)) < 0).all())


def test_additive_statistics_relative_to_full_scale() -> None:
    a, n = 0.05, 100 * 100
    w = torch.zeros(100, 100)
    w[0, 0] = -2.0  # max|W| = 2
    ws = sample_programmed_weights(w, VariationConfig(additive_sigma=a), 1, _gen(0))[0]
    d = (ws - w).double().flatten()
    assert abs(float(d.std()) - 2 * a) < 5 * 2 * a / math.sqrt(2 * n)
    assert abs(float(d.mean())) < 5 * 2 * a / math.sqrt(n)


def test_samples_are_seeded_and_independent() -> None:
    w = torch.randn(5, 4, generator=_gen(3))
    cfg = VariationConfig(sigma=0.2, additive_sigma=0.01)
    a = sample_programmed_weights(w, cfg, 3, _gen(7))
    b = sample_programmed_weights(w, cfg, 3, _gen(7))
    c = sample_programmed_weights(w, cfg, 3, _gen(8))
    assert a.shape == (3, 5, 4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # samples differ from each other
    with pytest.raises(ValueError, match="n_samples"):
        sample_programmed_weights(w, cfg, 0, _gen(0))


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, stride=2), nn.Flatten()
    )


@pytest.mark.parametrize("build,shape", [(_mlp, (7, 6)), (_cnn, (7, 2, 6, 6))])
def test_folded_batch_equals_per_sample_loop(build, shape) -> None:
    """The vectorized path computes exactly what S separate perturbed models compute."""
    model = build()
    x = torch.randn(shape, generator=_gen(1))
    cfg = VariationConfig(sigma=0.4, additive_sigma=0.02)
    out = monte_carlo_logits(model, x, cfg, 3, _gen(5))
    # redraw the same weights in the same order (layer by layer) and run each sample alone
    g = _gen(5)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    drawn = [[] for _ in layers]
    for _ in range(3):  # chip by chip, layer by layer
        for i, m in enumerate(layers):
            drawn[i].append(sample_programmed_weights(m.weight, cfg, 1, g)[0])
    for s in range(3):
        ref = x
        for mod in model:
            if mod in layers:
                w = drawn[layers.index(mod)][s]
                if isinstance(mod, nn.Linear):
                    ref = F.linear(ref, w, mod.bias)
                else:
                    ref = F.conv2d(ref, w, mod.bias, mod.stride, mod.padding, mod.dilation, mod.groups)
            else:
                ref = mod(ref)
        torch.testing.assert_close(out[s], ref, rtol=1e-5, atol=1e-5)
    # the model is restored afterwards
    assert all(isinstance(m, (nn.Linear, nn.Conv2d)) for m in layers)
    assert isinstance(model[0], (nn.Linear, nn.Conv2d))


def test_view_restores_model_on_error() -> None:
    model = _mlp()
    first = model[0]
    with pytest.raises(RuntimeError, match="boom"):
        with monte_carlo_view(model, VariationConfig(sigma=0.1), 2, _gen(0)):
            raise RuntimeError("boom")
    assert model[0] is first


def test_read_noise_std_matches_model_linear() -> None:
    """Output-referred read noise: std = read_noise * max|W| * ||x||_2 per output."""
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.5, -1.0, 0.2, 0.0], [2.0, 0.1, 0.0, 0.3]]))
    x = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    r, s = 0.05, 4000
    y = monte_carlo_logits(model, x, VariationConfig(read_noise=r), s, _gen(0))[:, 0, :].detach()
    expect = r * 2.0 * float(x.norm())
    clean = model(x)[0].detach()
    assert float((y.mean(0) - clean).abs().max()) < 5 * expect / math.sqrt(s)
    std = y.double().std(0)
    assert float((std - expect).abs().max()) < 5 * expect / math.sqrt(2 * s)


def test_read_noise_std_matches_model_conv() -> None:
    model = nn.Sequential(nn.Conv2d(1, 1, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[[[0.5, -1.0], [0.25, 0.75]]]]))
    x = torch.tensor([[[[1.0, 2.0, 0.0], [0.0, -1.0, 3.0], [1.0, 1.0, 1.0]]]])
    r, s = 0.1, 4000
    y = monte_carlo_logits(model, x, VariationConfig(read_noise=r), s, _gen(0))[:, 0].detach()  # [S, 1, 2, 2]
    patch_norm = F.unfold(x, 2).pow(2).sum(1).sqrt().view(1, 2, 2)
    expect = r * 1.0 * patch_norm
    std = y.double().std(0)
    assert float(((std - expect) / expect).abs().max()) < 5 / math.sqrt(2 * s)


def test_read_noise_is_fresh_per_input() -> None:
    model = nn.Sequential(nn.Linear(3, 1))
    x = torch.ones(2, 3)  # the same input twice in one pass
    y = monte_carlo_logits(model, x, VariationConfig(read_noise=0.1), 1, _gen(0))
    assert float((y[0, 0] - y[0, 1]).detach()) != 0.0


def test_monte_carlo_accuracy_summary_and_only() -> None:
    model = _mlp()
    x = torch.randn(64, 6, generator=_gen(2))
    y = model(x).argmax(-1)  # labels = clean predictions: clean accuracy 1
    r0 = monte_carlo_accuracy(model, x, y, VariationConfig(), n_samples=5)
    assert r0.accuracy_mean == 1.0 and r0.accuracy_std == 0.0 and r0.n_samples == 5
    cfg = VariationConfig(sigma=0.8)
    r = monte_carlo_accuracy(model, x, y, cfg, n_samples=16, seed=3, max_rows=100)
    assert r == monte_carlo_accuracy(model, x, y, cfg, n_samples=16, seed=3)  # chunking changes nothing
    assert r.accuracy_p5 <= r.accuracy_mean <= 1.0 and r.accuracy_mean < 1.0
    assert len(r.accuracies) == 16
    # only one layer varies: the other computes exactly
    with monte_carlo_view(model, cfg, 2, _gen(0), only=["2"]) as m:
        assert torch.equal(m[0].weights[0], model[0].layer.weight)
        assert not torch.equal(m[2].weights[0], m[2].layer.weight)
    with pytest.raises(ValueError, match="not analog layers"):
        monte_carlo_accuracy(model, x, y, cfg, 2, only=["nope"])


def test_summarize() -> None:
    r = summarize(torch.tensor([0.5, 0.7, 0.9]), 0.2)
    assert r.accuracy_mean == pytest.approx(0.7)
    assert r.accuracy_std == pytest.approx(0.2)
    assert r.accuracy_p5 == pytest.approx(0.52)
    assert fold(torch.arange(3.0).view(3, 1), 2).flatten().tolist() == [0, 1, 2, 0, 1, 2]


def test_program_with_variation_on_simulated_crossbar() -> None:
    from hil.simulated import PeripheryConfig, SimulatedCrossbar

    be = SimulatedCrossbar(6, 5, device="ideal", periphery=PeripheryConfig.ideal(), seed=0)
    target = torch.linspace(-0.3, 0.3, 30).view(6, 5)
    report, sent = program_with_variation(
        be, target, VariationConfig(sigma=0.2), _gen(0), tol=0.004, max_pulses_per_iter=128
    )
    assert report.converged
    ratio = sent / target
    assert bool((ratio > 0).all()) and not torch.allclose(sent, target)
    assert float((be.true_weights() - sent).abs().max()) <= 0.004 + 1e-6
    with pytest.raises(ValueError, match="Generator"):
        program_with_variation(be, target, VariationConfig(sigma=0.2), None)
    # no variation: the nominal target is programmed
    report, sent = program_with_variation(be, target, None, tol=0.004, max_pulses_per_iter=128)
    assert torch.equal(sent, target) and report.converged
