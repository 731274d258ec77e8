"""The fast paths of TTv2 training give what the general paths give.

- ``forward_columns`` (column reads) is bit for bit ``forward`` of one-hot inputs, with the
  same random draws, on SimulatedCrossbar (its own implementation) and on a backend that only
  has the primitives (the base class's default);
- ``pulse_columns`` is ``pulse`` of the full counts: same counters, same checks, the same
  weights on a noise-free device, devices outside the columns untouched;
- ``coincidence_pulsed`` lists exactly the nonzero counts of ``coincidence_total_net`` for
  the same random state;
- the closed-form chunk composition of bounded affine (soft-bounds) devices equals the
  chunk-by-chunk loop it replaces.
"""

from __future__ import annotations

import pytest
import torch

from hil.backend import BackendInfo, CrossbarBackend
from hil.device_model import DeviceModel, DeviceVariation, SoftBoundsStep
from hil.safety import SafetyError
from hil.simulated import PeripheryConfig, SimulatedCrossbar, UpdateConfig
from hil.simulated.devices import DeviceArray
from hil.simulated.pulse_trains import coincidence_pulsed, coincidence_total_net

PERIPHERIES = {
    "default": PeripheryConfig(),
    "ideal": PeripheryConfig.ideal(),
    "w_noise": PeripheryConfig(w_noise=0.02),
    "relative": PeripheryConfig(w_noise=0.01, w_noise_relative=0.05, out_bound=None),
    "dac5": PeripheryConfig(inp_res_bits=5, inp_bound=0.9),
}


def _soft(d2d: float = 0.3, c2c: float = 1.0) -> DeviceModel:
    spread = {"dw_up": d2d, "dw_down": d2d, "w_min": d2d, "w_max": d2d} if d2d else {}
    return DeviceModel(step=SoftBoundsStep(dw_up=0.1, dw_down=0.1), variation=DeviceVariation(c2c=c2c, d2d=spread))


def _random_weights(xb: SimulatedCrossbar, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    xb.set_weights(torch.rand(xb.shape, generator=g) * 1.6 - 0.8)


@pytest.mark.parametrize("periphery", list(PERIPHERIES))
@pytest.mark.parametrize("ks", [[3, 4, 5], [7, 0, 2], [1, 1, 6, 1], [0]])
def test_forward_columns_is_forward_of_one_hot_bit_for_bit(periphery: str, ks: list[int]) -> None:
    a = SimulatedCrossbar(6, 300, device=_soft(), periphery=PERIPHERIES[periphery], seed=4)
    b = SimulatedCrossbar(6, 300, device=_soft(), periphery=PERIPHERIES[periphery], seed=4)
    _random_weights(a, 1)
    _random_weights(b, 1)
    for _ in range(3):  # also the generator states after the call agree
        ref = a.forward(torch.eye(300)[ks])
        got = b.forward_columns(ks)
        assert torch.equal(got, ref)
    assert a.counts.as_dict() == b.counts.as_dict()


class PrimitiveBackend(CrossbarBackend):
    """Only the primitives: exact weights, pulses of 0.01, a pulse limit of 3 per call."""

    def __init__(self, rows: int, cols: int) -> None:
        super().__init__(rows, cols)
        self.w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0))
        self.pulsed: list[torch.Tensor] = []

    def _info(self) -> BackendInfo:
        return BackendInfo(name="Primitive", rows=self.rows, cols=self.cols, w_min=-5, w_max=5,
                           dw_min=0.01, max_pulses_per_call=3)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.T

    def _backward(self, d: torch.Tensor) -> torch.Tensor:
        return d @ self.w

    def _update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        self.w -= lr * d.T @ x

    def _pulse(self, counts: torch.Tensor) -> None:
        self.pulsed.append(counts.clone())
        self.w += 0.01 * counts


def test_default_column_paths_use_the_primitives() -> None:
    be = PrimitiveBackend(4, 6)
    assert torch.equal(be.forward_columns([5, 1]), be.w[:, [5, 1]].T)
    counts = torch.tensor([[1, -2], [0, 3], [0, 0], [-1, 1]])
    w0 = be.w.clone()
    be.pulse_columns([4, 0], counts)
    full = torch.zeros(4, 6, dtype=torch.int64)
    full[:, [4, 0]] = counts
    assert torch.equal(be.pulsed[-1], full)
    torch.testing.assert_close(be.w, w0 + 0.01 * full)
    assert be.counts.forward_calls == 1 and be.counts.forward_vectors == 2
    assert be.counts.pulse_calls == 1 and be.counts.pulses_requested == 8


def test_column_paths_check_their_arguments() -> None:
    be = PrimitiveBackend(4, 6)
    with pytest.raises(ValueError, match="distinct"):
        be.pulse_columns([1, 1], torch.zeros(4, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"outside \[0, 6\)"):
        be.forward_columns([6])
    with pytest.raises(ValueError, match="empty"):
        be.forward_columns([])
    with pytest.raises(ValueError, match=r"shape \[4, 2\]"):
        be.pulse_columns([1, 2], torch.zeros(4, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="integer"):
        be.pulse_columns([1, 2], torch.zeros(4, 2))
    with pytest.raises(SafetyError, match="at most 3"):
        be.pulse_columns([1, 2], torch.full((4, 2), 4))
    assert be.counts.pulse_calls == 0 and not be.pulsed  # nothing was sent


@pytest.mark.parametrize("shape", [(8, 16), (128, 256)])  # computed whole / gathered
def test_pulse_columns_is_pulse_of_full_counts(shape: tuple[int, int]) -> None:
    rows, cols = shape
    model = _soft(d2d=0.3, c2c=0.0)  # noise-free: the two paths agree to rounding
    a = SimulatedCrossbar(rows, cols, device=model, periphery=PeripheryConfig.ideal(), seed=2)
    b = SimulatedCrossbar(rows, cols, device=model, periphery=PeripheryConfig.ideal(), seed=2)
    _random_weights(a, 3)
    _random_weights(b, 3)
    g = torch.Generator().manual_seed(5)
    ks = [cols - 1, 2, 5]
    for _ in range(4):
        sub = torch.randint(-3, 4, (rows, len(ks)), generator=g) * (torch.rand(rows, len(ks), generator=g) < 0.4)
        full = torch.zeros(rows, cols, dtype=torch.int64)
        full[:, ks] = sub
        before = b.hidden_weights()
        a.pulse(full)
        b.pulse_columns(ks, sub)
        torch.testing.assert_close(b.hidden_weights(), a.hidden_weights(), rtol=0.0, atol=1e-6)
        untouched = full == 0
        assert torch.equal(b.hidden_weights()[untouched], before[untouched])
    assert a.counts.as_dict() == b.counts.as_dict()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("batch", [1, 10])
def test_coincidence_pulsed_lists_the_nonzero_counts(seed: int, batch: int) -> None:
    g = torch.Generator().manual_seed(100 + seed)
    rows, cols = 64, 96
    x = torch.rand(batch, cols, generator=g) * (torch.rand(batch, cols, generator=g) < 0.5)
    d = (torch.rand(batch, rows, generator=g) - 0.5) * (torch.rand(batch, rows, generator=g) < 0.2)
    lr = 0.05 * (seed + 1) * (1 if seed % 2 else -1)
    cfg = UpdateConfig(bl=31)
    state = torch.Generator().manual_seed(seed).get_state()
    ga, gb = torch.Generator(), torch.Generator()
    ga.set_state(state)
    gb.set_state(state)
    total, net = coincidence_total_net(x, d, lr, 0.1, cfg, ga, counts_dtype=None)
    idx, t, n = coincidence_pulsed(x, d, lr, 0.1, cfg, gb, max_devices=rows * cols)
    assert idx is not None
    ref = torch.nonzero(total.reshape(-1)).view(-1)
    assert torch.equal(idx, ref)
    assert torch.equal(t, total.reshape(-1)[ref]) and torch.equal(n, net.reshape(-1)[ref])
    assert torch.equal(ga.get_state(), gb.get_state())
    # a block larger than max_devices: the full counts
    gb.set_state(state)
    idx2, t2, n2 = coincidence_pulsed(x, d, lr, 0.1, cfg, gb, max_devices=0)
    if idx2 is None:
        assert torch.equal(t2, total) and torch.equal(n2, net)
    else:  # nothing fired at all
        assert idx2.numel() == 0 and not bool(total.any())


@pytest.mark.parametrize("chunks", [1, 3, 8])
def test_bounded_composite_equals_the_chunk_loop(chunks: int) -> None:
    arr = DeviceArray(_soft(d2d=0.3, c2c=0.0), 16, 24, torch.Generator().manual_seed(0), torch.device("cpu"))
    coeffs = arr._coefficients()
    assert coeffs.bounded
    g = torch.Generator().manual_seed(1)
    w = arr.clamp(torch.rand(arr.shape, generator=g) * 2 - 1)
    counts = torch.randint(0, 6, (chunks, 2, *arr.shape), generator=g).float()
    counts[:, :, :3] = 0  # devices without pulses
    p = coeffs.dense
    loop = arr._clamp_to(arr._affine_chunks(w, counts, p), p, None)
    closed = arr._clamp_to(arr._affine_composite(w, counts, p), p, None)
    torch.testing.assert_close(closed, loop, rtol=0.0, atol=2e-6)
    assert torch.equal(closed[:3], w[:3])  # bit-unchanged without pulses


def test_load_state_dict_does_not_share_the_callers_weights() -> None:
    xb = SimulatedCrossbar(128, 256, device=_soft(), seed=0)
    _random_weights(xb, 2)
    state = xb.state_dict()
    saved = state["weights"].clone()
    xb.load_state_dict(state)
    xb.pulse_columns([3], torch.ones(128, 1, dtype=torch.int64))
    xb.update(torch.rand(4, 256), torch.rand(4, 128) - 0.5, 0.5)
    assert torch.equal(state["weights"], saved)


@pytest.mark.parametrize("line_first", [False, True])
def test_first_side_trains_are_independent_bernoulli(line_first: bool) -> None:
    """Slot marginals, pairs of slots and per-line counts of both samplers match independent
    Bernoulli(p) slots (tolerances: 5 standard errors of the estimates)."""
    from hil.simulated import pulse_trains as pt

    bl, reps = 31, 4000
    p_line = torch.tensor([0.0, 0.0005, 0.003, 0.02, 0.2, 0.6, 1.0])
    n = p_line.numel()
    # many samples of the same lines; sparse enough for line-first when most lines are rare
    p = p_line.repeat(reps, 1)
    if not line_first:
        p = p[:, :3]  # rare lines only ...
        p_line = p_line[:3]
        n = 3
    g = torch.Generator().manual_seed(7)
    old = pt._LINE_FIRST_MIN
    pt._LINE_FIRST_MIN = 1 if line_first else 10**12
    try:
        if line_first:  # force the line-first branch for every line (its cost test passes)
            p = torch.cat([p, torch.zeros(reps, 200)], dim=1)
        trains = pt.first_side_trains(p, torch.log1p(-p), bl, g)[:, :, :n].double()  # [reps, bl, n]
    finally:
        pt._LINE_FIRST_MIN = old
    pl = p_line.double()
    se = (pl * (1 - pl) / (reps * bl)).sqrt().clamp(min=1e-4)
    assert bool(((trains.mean(dim=(0, 1)) - pl).abs() <= 5 * se + 1e-12).all())
    # slot-wise: the first and the last slot fire as often as any other (no position bias)
    for t in (0, bl - 1):
        se_t = (pl * (1 - pl) / reps).sqrt().clamp(min=1e-3)
        assert bool(((trains[:, t].mean(0) - pl).abs() <= 5 * se_t).all())
    # independence of two slots: P(both) = p^2
    both = (trains[:, 0] * trains[:, 5]).mean(0)
    se_b = (pl**2 * (1 - pl**2) / reps).sqrt().clamp(min=1e-3)
    assert bool(((both - pl**2).abs() <= 5 * se_b).all())
    # count per line: Binomial(bl, p) mean and variance
    counts = trains.sum(1)
    var = bl * pl * (1 - pl)
    assert bool(((counts.mean(0) - bl * pl).abs() <= 5 * (var / reps).sqrt() + 1e-9).all())
    mu4 = bl * pl * (1 - pl) * (1 + 3 * (bl - 2) * pl * (1 - pl))  # 4th central moment
    ok = (counts.var(0) - var).abs() <= 5 * ((mu4 - var**2).clamp(min=0) / reps).sqrt() + 1e-9
    assert bool(ok.all())


def test_train_throughput_benchmark_smoke(tmp_path) -> None:
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"
    spec = importlib.util.spec_from_file_location("train_throughput", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "tp.json"
    mod.main(["--workloads", "digits-mlp", "--samples", "40", "--repeats", "1", "--devices", "cpu",
              "--ceilings", "--json", str(out)])
    row = json.loads(out.read_text())["results"][0]
    assert row["workload"] == "digits-mlp" and row["samples"] == 40
    assert row["ours_samples_per_s"]["median"] > 0 and "aihwkit_samples_per_s" not in row
    for ceiling in ("ours_zero_cost_writes", "ours_without_update", "digital_torch"):
        assert row[f"{ceiling}_samples_per_s"]["median"] > 0
    prof = mod.main(["--profile", "--workloads", "digits-mlp", "--samples", "40"])["profile"][0]
    assert prof["torch_ops_per_batch"] > 50
    pct = prof["percent"]
    assert 0 < pct["controller step (all of the below)"] <= 100
    assert pct["  pulse trains (probabilities, draws)"] <= pct["  coincidence counts incl. trains"]
    # --batch sets the mini-batch on every side; a batch below 1 is refused before any timing
    big = mod.main(["--workloads", "digits-mlp", "--samples", "40", "--repeats", "1", "--devices", "cpu",
                    "--batch", "20", "--ours-bl", "5"])
    assert big["batch"] == 20 and big["ours_bl"] == 5 and big["results"][0]["ours_samples_per_s"]["median"] > 0
    with pytest.raises(SystemExit):
        mod.main(["--workloads", "digits-mlp", "--batch", "0"])
    with pytest.raises(SystemExit):
        mod.main(["--workloads", "digits-mlp", "--ours-bl", "0"])
    with pytest.raises(SystemExit):
        mod.main(["--workloads", "digits-mlp", "--threads", "0"])
    # --threads pins the same number on every side and is recorded
    before = torch.get_num_threads()
    try:
        two = mod.main(["--workloads", "digits-mlp", "--samples", "20", "--repeats", "1",
                        "--devices", "cpu", "--threads", "2"])
        assert two["threads"] == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
