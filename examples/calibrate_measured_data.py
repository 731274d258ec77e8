"""Calibrate the three shared measured data sets and print the figures of docs/results.md (calibration).

    python examples/calibrate_measured_data.py [--data ../shared/data] [--out runs/calibration]
                                               [--json PATH] [--quick] [--replay-seeds 4]

For every raw pulse-train set (HfO2 ReRAM of Gong et al.; ferroelectric
amplitude sweeps) it runs ``hil calibrate`` (as a library call, same code), the
held-out replay check (the model fitted on the fitting rows, replayed on the
simulator with ``hil characterize --replay --restart-at-holdout``'s code, the
copies of ``hil.calibration.workflow.replay_count`` averaged: 400 for the HfO2 file;
repeated with replay seeds 0..N-1, ``--replay-seeds``, mean and spread printed)
and the same check in-sample (the final model on all
rows); one ``hil characterize --replay`` of each set is also written to disk.
For the HfO2 set it compares the fit with aihwkit's ``ReRamESPresetDevice``
(the published reference fit named in the data's SOURCE.md), evaluated with the
same likelihood.  For the ENODe lookup table it imports the table model and, as
a check of the table path, calibrates pulse trains sampled from the tables.
``--quick`` skips the ferroelectric in-sample replay and the ENODe sampling.
torch runs with one thread; BLAS with one thread inside the fits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hil.calibration.compare import format_metrics, replay_metrics
from hil.calibration.filter import Sequences, gaussian_nll, run_filter
from hil.calibration.mapping import MappingSpec
from hil.calibration.pipeline import CalibrationConfig, jsonable
from hil.calibration.report import write_report
from hil.calibration.stepmodels import Family
from hil.calibration.workflow import calibrate_path, replay_check, replay_copies
from hil.characterization.runner import replay_to_file
from hil.device_model import DeviceModel, DeviceVariation, TableStep

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"


def aihwkit_reram_es(w: np.ndarray, up: bool) -> np.ndarray:
    """Mean step of aihwkit's ReRamESPresetDevice (ExpStepDevice) at weights ``w`` in [-1, 1].

    ExpStep: z = 2 w / (w_max - w_min) * a + b; up: dw_min (1 + up_bias) max(1 - A_up exp(gamma_up z), 0),
    down: dw_min (1 + down_bias) max(1 - A_down exp(-gamma_down z), 0), with up_bias = min(up_down, 0),
    down_bias = -max(up_down, 0).  Values of the preset as quoted in the data's SOURCE.md.
    """
    dw_min, up_down = 0.00135, 0.259359
    a = b = -0.5
    z = 2.0 * w / 2.0 * a + b
    if up:
        return dw_min * (1.0 + min(up_down, 0.0)) * np.maximum(1.0 - (-1.18445) * np.exp(5.0 * z), 0.0)
    return -dw_min * (1.0 - max(up_down, 0.0)) * np.maximum(1.0 - (-0.081404) * np.exp(-5.0 * z), 0.0)


def aihwkit_as_table(nodes: int = 81) -> DeviceModel:
    """The aihwkit preset as our ``table`` model: its mean step tabulated, its ``dw_min_std`` (5, relative
    to the step) as the tabulated std, its ``write_noise_std`` (75 x dw_min, not accumulating, redrawn at
    every pulse) as our write-noise offset with ``write_noise_rho`` 0 (aihwkit's semantics); no read noise."""
    grid = np.linspace(-1.0, 1.0, nodes)
    up = aihwkit_reram_es(grid, True)
    dn = aihwkit_reram_es(grid, False)
    return DeviceModel(
        name="aihwkit-ReRamES",
        step=TableStep(grid=grid.tolist(), up_mean=up.tolist(), down_mean=dn.tolist(),
                       up_std=(5.0 * np.abs(up)).tolist(), down_std=(5.0 * np.abs(dn)).tolist()),
        variation=DeviceVariation(write_noise=75 * 0.00135, write_noise_rho=0.0),
        read_noise=0.0,
    )


def model_nll(model: DeviceModel, seq: Sequences, score: np.ndarray) -> float:
    """NLL of a device model (one device, its nominal parameters) on scored reads, our filter."""
    step = model.step
    if step.model == "table":
        fam = Family("table", grid=np.array(step.grid), std_up=np.array(step.up_std), std_down=np.array(step.down_std),
                     table_bounds=(step.w_min, step.w_max))
        p: dict[str, Any] = {"dw_up": np.ones((1, 1)), "dw_down": np.ones((1, 1))}
        for i in range(len(step.grid)):
            p[f"up_node_{i}"] = np.full((1, 1), step.up_mean[i])
            p[f"down_node_{i}"] = np.full((1, 1), step.down_mean[i])
    else:
        fam = Family(step.model)
        p = {k: np.full((1, 1), float(getattr(step, k))) for k in step.parameters}
    v = model.variation
    # read noise 0 (aihwkit's preset): a floor far below every other variance keeps the filter defined
    out = run_filter(seq, fam, p, np.full((1, 1), v.c2c), np.full((1, 1), max(model.read_noise, 1e-9) ** 2),
                     write_var=v.write_noise**2, write_rho=v.write_noise_rho)
    return float(gaussian_nll(out.nu[0][score], out.var[0][score]).sum())


def step_table(model: DeviceModel, ws: list[float]) -> dict[str, list[float]]:
    import torch as _t

    from hil.simulated.devices import DeviceArray

    arr = DeviceArray(model, 1, len(ws), _t.Generator().manual_seed(0), _t.device("cpu"), _t.float64)
    w = _t.tensor([ws], dtype=_t.float64)
    return {"up": arr.delta_up(w)[0].tolist(), "down": arr.delta_down(w)[0].tolist()}


def msq_change(ms_list: list[Any], ks: tuple[int, ...] = (1, 10, 100)) -> dict[int, float]:
    """Mean square change over ``k`` pulses within each contiguous sweep, averaged over the sets
    given (the measured file, or the replayed copies): grows like ``k`` for accumulating
    (write) noise and saturates for noise that does not accumulate."""
    out = {}
    for k in ks:
        vals = []
        for ms in ms_list:
            starts = np.nonzero(ms.segment_starts())[0].tolist() + [len(ms)]
            for a, b in zip(starts[:-1], starts[1:], strict=True):
                g = ms.conductance[a:b]
                if len(g) > k:
                    vals.append((g[k:] - g[:-k]) ** 2)
        out[k] = float(np.mean(np.concatenate(vals))) if vals else float("nan")
    return out


AMPLITUDE_EDGES_V = (0.0, 1.0, 2.0, 3.0, float("inf"))


def pulse_groups(cal: Any, by: str) -> tuple[np.ndarray, list[str], int]:
    """Group index of every row for :func:`step_factor_experiment`, the group names and the
    reference group.  ``by="amplitude"``: |amplitude| 0-1, 1-2, 2-3, >3 V (reference 1-2 V);
    ``by="width"``: each pulse width of the fitting pulses (a held-out width they lack goes to
    the nearest one in log width; reference 2 us)."""
    ms = cal.measurements
    if by == "amplitude":
        grp = np.digitize(np.abs(ms.optional["amplitude_v"]), AMPLITUDE_EDGES_V[1:-1])
        return grp, ["0-1 V", "1-2 V", "2-3 V", ">3 V"], 1
    width = ms.optional["width_s"]
    fitted = np.unique(width[~cal.heldout & (ms.polarity != 0)])
    lw = np.log10(fitted)
    grp = np.argmin(np.abs(np.log10(width)[:, None] - lw[None, :]), axis=1)
    return grp, [f"{v:.0e} s" for v in fitted], int(np.argmin(np.abs(lw - np.log10(2e-6))))


def step_factor_experiment(cal: Any, by: str, copies: int = 32, seed: int = 0) -> dict[str, Any]:
    """Does a step scale per pulse group (|amplitude| or width) help the held-out runs?
    (docs/calibration.md, section 7)

    Two pooled ``softbounds`` fits on the fitting rows with our filter: identical pulses, and every
    pulse's step (and its c2c noise) multiplied by a factor of its group (:func:`pulse_groups`;
    the reference group's factor is 1), one set of factors per direction.  Scored
    by BIC, held-out NLL, and a Monte Carlo replay of every row (``copies`` copies, pulse by pulse,
    restarted at the measured value at each run start and at the first held-out read, as
    ``hil characterize --restart-at-holdout``) scored with :func:`hil.calibration.compare.replay_metrics` on the
    held-out rows.  Both variants are pooled and without device-to-device spread, so they
    compare with each other, not with the pipeline's model.
    """
    from scipy import optimize

    ms, seq = cal.measurements, cal.seq
    train, held = seq.mask(~cal.heldout), seq.mask(cal.heldout)
    grp_row, group_names, ref = pulse_groups(cal, by)
    grp = np.zeros(seq.shape, dtype=np.int64)
    ok = seq.row >= 0
    grp[ok] = grp_row[seq.row[ok]]
    up_rows = seq.pol > 0
    fam = Family("softbounds")
    names = ("dw_up", "dw_down", "w_min", "w_max")
    n_g = len(group_names)

    def factors(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(theta) == 6:
            return np.ones(n_g), np.ones(n_g)
        return np.insert(theta[6 : 5 + n_g], ref, 1.0), np.insert(theta[5 + n_g :], ref, 1.0)

    def filt(theta: np.ndarray) -> Any:
        fu, fd = factors(theta)
        # identical pulses: scale 1 explicitly (the calibration's own pulse law, if any, is not used here)
        scale = np.where(up_rows, fu[grp], fd[grp]) if len(theta) > 6 else np.ones(seq.shape)
        p = {k: np.full((1, 1), theta[i]) for i, k in enumerate(names)}
        return run_filter(seq, fam, p, np.full((1, 1), theta[4]), np.full((1, 1), theta[5] ** 2), step_scale=scale)

    def resid(theta: np.ndarray) -> np.ndarray:
        out = filt(theta)
        v = np.maximum(out.var[0][train], 1e-12)
        return np.concatenate([out.nu[0][train] / np.sqrt(v), np.sqrt(np.log(v / 5e-13))])

    def nll(theta: np.ndarray, rows: np.ndarray) -> float:
        out = filt(theta)
        return float(gaussian_nll(out.nu[0][rows], np.maximum(out.var[0][rows], 1e-12)).sum())

    lo, hi = [1e-6, 1e-6, -20.0, 1e-3, 0.0, 1e-5], [10.0, 10.0, -1e-3, 20.0, 100.0, 10.0]
    results: dict[str, Any] = {}
    theta = np.array([0.01, 0.01, -1.0, 1.0, 1.0, 0.02])
    for label, extra in (("identical pulses", 0), (f"step scale per {by} group", 2 * (n_g - 1))):
        start = np.concatenate([theta, np.ones(extra)])
        fit = optimize.least_squares(resid, start, bounds=(lo + [1e-3] * extra, hi + [100.0] * extra),
                                     x_scale="jac", max_nfev=200, ftol=1e-7, xtol=1e-7)
        theta = fit.x[:6]
        n_train = nll(fit.x, train)
        fu, fd = factors(fit.x)
        scale_row = np.where(ms.polarity > 0, fu[grp_row], fd[grp_row])
        m = pooled_replay(cal, fit.x[:6], scale_row, copies, seed)
        results[label] = {
            "groups": group_names,
            "reference_group": group_names[ref],
            "parameters": len(fit.x),
            "nll_train": n_train,
            "bic": 2.0 * n_train + len(fit.x) * float(np.log(int(train.sum()))),
            "nll_heldout": nll(fit.x, held),
            "factors_up": fu.tolist(),
            "factors_down": fd.tolist(),
            "heldout_replay": {k: v for k, v in m.items() if k not in ("per_device", "amplitude_groups")},
        }
    return results


def pooled_replay(cal: Any, theta: np.ndarray, scale_row: np.ndarray, copies: int = 32, seed: int = 0) -> dict[str, Any]:
    """Monte Carlo replay of a soft-bounds model ``theta`` = (dw_up, dw_down, w_min, w_max, c2c,
    read_sd) (``[6]``: pooled; ``[rows, 6]``: each row's device's own) with every row's step scaled
    by ``scale_row``, pulse by pulse, restarted at the measured value at each run start and at the
    first held-out read (as ``hil characterize --restart-at-holdout``), scored on the held-out rows
    by :func:`replay_metrics`."""
    from hil.calibration.compare import holdout_starts

    ms, w = cal.measurements, cal.weights
    restart = ms.segment_starts() | holdout_starts(ms, cal.heldout)
    codes, _ = ms.device_codes()
    rng = np.random.default_rng(seed)
    th = np.broadcast_to(np.asarray(theta, dtype=np.float64), (len(ms), 6))
    state: dict[int, np.ndarray] = {}
    reads = np.zeros((len(ms), copies))
    for i in range(len(ms)):
        d = int(codes[i])
        dwu, dwd, wmin, wmax, c2c, rsd = th[i]
        if restart[i] or d not in state:
            state[d] = np.full(copies, np.clip(w[i], wmin, wmax))
        elif ms.polarity[i] != 0:
            x = state[d]
            if ms.polarity[i] > 0:
                step = np.maximum(dwu * scale_row[i] * (1.0 - x / wmax), 0.0)
            else:
                step = -np.maximum(dwd * scale_row[i] * (1.0 - x / wmin), 0.0)
            state[d] = np.clip(x + step + c2c * np.abs(step) * rng.standard_normal(copies), wmin, wmax)
        reads[i] = state[d] + rsd * rng.standard_normal(copies)
    reps = []
    for j in range(copies):
        r = ms.subset(np.ones(len(ms), dtype=bool))
        r.conductance = cal.mapping.to_conductance(reads[:, j], ms.device)
        reps.append(r)
    return replay_metrics(ms, reps, cal.heldout)


def law_scale_rows(ms: Any, response: Any, rows: np.ndarray | None = None) -> np.ndarray:
    """Step scale of every row (1 for reads) under a :class:`~hil.pulse_response.PulseResponse`."""
    amp, width = np.abs(ms.optional["amplitude_v"]), ms.optional["width_s"]
    out = np.ones(len(ms))
    sel_rows = np.ones(len(ms), dtype=bool) if rows is None else rows
    for up in (True, False):
        sel = sel_rows & (ms.polarity != 0) & ((ms.polarity > 0) == up)
        out[sel] = response.scale_np(amp[sel], width[sel], up)
    return out


def law_experiment(cal: Any, copies: int = 32, seed: int = 0) -> dict[str, Any] | None:
    """The calibration's own pulse law (:mod:`hil.calibration.pulse_law`: its pooled soft-bounds fit
    with the KAI / Merz law) in :func:`step_factor_experiment`'s harness: BIC on the fitting rows
    and the same pulse-by-pulse held-out replay, to compare with the group factors."""
    law = cal.pulse_law
    if law is None:
        return None
    scale_row = law_scale_rows(cal.measurements, law.response)
    b = law.base_law
    theta = np.array([b["dw_up"], b["dw_down"], b["w_min"], b["w_max"], b["c2c"], b.get("read_sd", cal.model.read_noise)])
    m = pooled_replay(cal, theta, scale_row, copies, seed)
    k = 6 + law.k_law
    return {
        "parameters": k,
        "bic": 2.0 * law.nll_law + k * float(np.log(law.n_scored)),
        "bic_identical": 2.0 * law.nll_identical + 6 * float(np.log(law.n_scored)),
        "law": law.as_dict(),
        "heldout_replay": {kk: v for kk, v in m.items() if kk not in ("per_device", "amplitude_groups")},
    }


def law_by_device(cal: Any, min_reads: int = 60) -> dict[str, Any]:
    """The pulse law fitted to each device alone (its fitting rows, with a soft-bounds model, as
    :func:`hil.calibration.pulse_law.fit_pulse_law` fits the pooled one), and its write noise c2c
    with and without the law: how much of the pooled fit's c2c is the devices' differences in
    the law; and the held-out replay with every device replayed with its own fit (the best a
    device-to-device spread of the law could do: docs/calibration.md, section 7)."""
    from hil.calibration.candidates import candidate_family, initial_values
    from hil.calibration.filter import Sequences
    from hil.calibration.pulse_law import fit_pulse_law

    ms, w = cal.measurements, cal.weights
    out = []
    theta = np.full((len(ms), 6), np.nan)
    scale_row = np.ones(len(ms))
    for d in ms.devices:
        mine = ms.device == d
        sub = ms.subset(mine)
        seq = Sequences.build(sub, w[mine])
        rows = ~cal.heldout[mine]
        score = seq.mask(rows)
        if score.sum() < min_reads:
            continue
        fam = candidate_family("softbounds", seq, score, cal.config.table_nodes)
        law = fit_pulse_law(sub, seq, score, rows, initial_values(fam, seq, score, None), None)
        if law is None:
            continue
        out.append({
            "device": str(d), "reads": int(score.sum()), "bic_change": law.bic_change,
            "c2c_identical": law.base_identical["c2c"], "c2c_law": law.base_law["c2c"],
            "up": law.response.up.model_dump(), "down": law.response.down.model_dump(),
        })
        b = law.base_law
        theta[mine] = [b["dw_up"], b["dw_down"], b["w_min"], b["w_max"], b["c2c"], b["read_sd"]]
        scale_row[mine] = law_scale_rows(ms, law.response, mine)[mine]
    replay = None
    held_devices = {str(d) for d in ms.devices if cal.heldout[ms.device == d].any()}
    if held_devices <= {r["device"] for r in out}:
        # only the devices with held-out rows are scored; the others keep a placeholder model
        fill = np.isnan(theta[:, 0])
        theta[fill] = [0.0, 0.0, -1.0, 1.0, 0.0, 0.0]
        m = pooled_replay(cal, theta, scale_row)
        replay = {k: v for k, v in m.items() if k not in ("amplitude_groups",)}
    return {"devices": out, "heldout_replay_own_fits": replay}


def step_smoothness(cal: Any) -> dict[str, float]:
    """How smooth the measured curves are: the first and second differences of the range-normalized
    conductance within each run's stretches of one polarity (std and median |.|).  Read noise of
    std s alone gives a second difference of std sqrt(6) s; a median far below the std means
    heavy tails: mostly smooth steps and a few large jumps (docs/calibration.md, section 7)."""
    from hil.calibration.compare import device_ranges

    ms = cal.measurements
    ranges = device_ranges(ms)
    d1, d2 = [], []
    for d in ms.devices:
        for c in np.unique(ms.cycle[ms.device == d]):
            sel = (ms.device == d) & (ms.cycle == c)
            g, pol = ms.conductance[sel] / ranges[d], ms.polarity[sel]
            for p in (1, -1):
                gg = g[pol == p]
                if len(gg) > 5:
                    d1.append(np.diff(gg))
                    d2.append(np.diff(gg, 2))
    a, b = np.concatenate(d1), np.concatenate(d2)
    return {"first_std": float(a.std()), "first_median_abs": float(np.median(np.abs(a))),
            "second_std": float(b.std()), "second_median_abs": float(np.median(np.abs(b)))}


def window_by_run(cal: Any) -> dict[str, list[dict[str, Any]]]:
    """Measured conductance window (1st and 99th percentile, siemens) of every run (cycle) of
    each device with held-out runs, in time order, and whether the run is held out: how the
    devices change between runs (docs/calibration.md, section 7)."""
    ms = cal.measurements
    out: dict[str, list[dict[str, Any]]] = {}
    for d in ms.devices:
        mine = ms.device == d
        if not cal.heldout[mine].any():
            continue
        runs = []
        for c in np.unique(ms.cycle[mine]):
            r = mine & (ms.cycle == c)
            lo, hi = np.percentile(ms.conductance[r], [1.0, 99.0])
            runs.append({"cycle": int(c), "g_low_s": float(lo), "g_high_s": float(hi), "heldout": bool(cal.heldout[r].any())})
        out[str(d)] = runs
    return out


def response_by_width(cal: Any, max_v: float = 1.0) -> list[dict[str, Any]]:
    """Measured mean change per pulse (range-normalized) of pulses with |amplitude| below ``max_v``,
    by pulse width, up and down, with the fraction of those pulses that are held out: how the
    response to one amplitude depends on the width (docs/calibration.md, section 7)."""
    from hil.calibration.compare import device_ranges, previous_rows

    ms = cal.measurements
    codes, names = ms.device_codes()
    ranges = device_ranges(ms)
    prev = previous_rows(codes)
    ok = (ms.polarity != 0) & ~ms.segment_starts() & (prev >= 0)
    ok &= np.abs(ms.optional["amplitude_v"]) < max_v
    idx = np.nonzero(ok)[0]
    dg = np.array([(ms.conductance[i] - ms.conductance[prev[i]]) / ranges[names[codes[i]]] for i in idx])
    width = ms.optional["width_s"][idx]
    rows = []
    for wv in np.unique(width):
        sel = width == wv
        row: dict[str, Any] = {"width_s": float(wv), "pulses": int(sel.sum()),
                               "heldout_fraction": float(cal.heldout[idx[sel]].mean())}
        for pol, key in ((1, "up"), (-1, "down")):
            m = sel & (ms.polarity[idx] == pol)
            row[f"mean_change_{key}"] = float(dg[m].mean()) if m.sum() >= 3 else None
        rows.append(row)
    return rows


def over_seeds(by_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean, standard deviation and range over replay seeds of the held-out figures (each a Monte
    Carlo estimate from the replayed copies)."""
    out: dict[str, Any] = {"seeds": sorted(by_seed), "replays": by_seed[min(by_seed)]["replays"]}
    for key in ("nrmse", "step_std_ratio_up", "step_std_ratio_down"):
        v = np.array([by_seed[k][key] for k in sorted(by_seed)], dtype=float)
        out[key] = {"values": v.tolist(), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                    "min": float(v.min()), "max": float(v.max())}
    return out


def format_seeds(s: dict[str, Any]) -> str:
    n = s["nrmse"]
    return (f"  held-out over replay seeds {s['seeds'][0]}-{s['seeds'][-1]} ({s['replays']} copies each): NRMSE mean "
            f"{n['mean']:.4f}, std {n['std']:.4f} ({', '.join(f'{x:.4f}' for x in n['values'])}); step spread up "
            f"{s['step_std_ratio_up']['min']:.3f}..{s['step_std_ratio_up']['max']:.3f}, down "
            f"{s['step_std_ratio_down']['min']:.3f}..{s['step_std_ratio_down']['max']:.3f}")


def run_set(name: str, path: Path, out: Path, cfg: CalibrationConfig, in_sample: bool, fmt: str = "auto",
            fit_samples: bool = False, seeds: int = 1) -> tuple[dict[str, Any], Any]:
    t0 = time.perf_counter()
    run = calibrate_path(path, fmt, None, cfg, replay=False, fit_samples=fit_samples)
    t_cal = time.perf_counter() - t0
    cal = run.calibration
    assert cal is not None and run.measurements is not None
    ms = run.measurements
    t1 = time.perf_counter()
    cal.replay = replay_check(cal)
    t_rep = time.perf_counter() - t1
    # the held-out figures are Monte Carlo estimates: their mean and spread over replay seeds
    by_seed = {0: cal.replay, **{s: replay_check(cal, seed=s) for s in range(1, seeds)}}
    out.mkdir(parents=True, exist_ok=True)
    run.model.save(out / f"{name}.json")
    ms.save(out / f"{name}.csv")
    write_report(cal, out / f"{name}-report", run.reference)
    res: dict[str, Any] = {
        "input": str(path),
        "rows": len(ms),
        "devices": len(ms.devices),
        "chosen": cal.chosen,
        "heldout_unit": cal.heldout_unit,
        "calibrate_seconds": t_cal,
        "replay_check_seconds": t_rep,
        "candidates": [c.model_dump() for c in cal.candidates],
        "parameters": {k: {kk: v.get(kk) for kk in ("value", "se", "d2d")} for k, v in cal.parameters.items()},
        "model": json.loads(run.model.to_json()),
        "heldout_replay": {k: v for k, v in cal.replay.items() if k not in ("trajectory", "per_device")},
        "heldout_replay_seeds": over_seeds(by_seed),
    }
    print(f"\n=== {name}: {path}")
    print(f"{len(ms)} rows, {len(ms.devices)} devices; calibrate {t_cal:.1f} s (torch and BLAS 1 thread); chosen {cal.chosen}")
    for c in cal.candidates:
        print(f"  {c.model:<11} BIC {c.bic:>11.1f}  held-out NLL {c.nll_heldout if c.nll_heldout is not None else float('nan'):>10.1f}"
              f"  {('eligible' if c.eligible else '-') if c.determined else 'rejected (undetermined)'}"
              f"{'  <- chosen' if c.model == cal.chosen else ''}")
    print(format_metrics(cal.replay, f"held-out replay ({cal.heldout_unit}), model fitted on the fitting rows:"))
    if seeds > 1:
        print(format_seeds(res["heldout_replay_seeds"]))
    if in_sample:
        reps = replay_copies(run.model, ms, cal.mapping, cal.replay["replays"])
        m = replay_metrics(ms, reps)
        res["in_sample_replay"] = {k: v for k, v in m.items() if k != "per_device"}
        print(format_metrics(m, "in-sample replay (final model, all rows):"))
    # one `hil characterize --replay` file, as a user would run it
    from hil.calibration.workflow import device_periphery
    from hil.simulated import SimulatedCrossbar

    sim = SimulatedCrossbar(1, len(ms.devices), device=run.model, periphery=device_periphery(run.model), seed=0)
    rep_path = out / f"{name}-replay.csv"
    if rep_path.exists():
        rep_path.unlink()
    replay_to_file(sim, ms, cal.mapping, rep_path, progress=False)
    print(f"  one characterize --replay written to {rep_path}")
    return res, cal


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=Path("runs/calibration"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--replay-seeds", type=int, default=4,
                    help="held-out replay checks of the two raw sets with seeds 0..N-1 (mean and spread printed)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if not args.data.is_dir():
        print(f"measured data not found at {args.data}; pass --data", file=sys.stderr)
        return 2
    results: dict[str, Any] = {}

    # ---- HfO2 ReRAM (Gong et al.), also in the units of the aihwkit fit (w = the file's values)
    gong = args.data / "reram-hfo2-gong" / "gong_et_al.csv"
    results["hfo2"], cal_h = run_set("hfo2", gong, args.out, CalibrationConfig(name="hfo2-gong"), in_sample=True,
                                     seeds=args.replay_seeds)
    # the same with chunks of 64 reads (the filter's default before the write-noise offset)
    run64 = calibrate_path(gong, "auto", None, CalibrationConfig(name="hfo2-gong-chunk64", chunk=64), replay=False)
    assert run64.calibration is not None
    rep64 = replay_check(run64.calibration)
    v64 = run64.calibration.train_model.variation
    results["hfo2_chunk64"] = {
        "chosen": run64.calibration.chosen, "c2c": v64.c2c, "write_noise": v64.write_noise,
        "write_noise_rho": v64.write_noise_rho,
        "heldout_replay": {k: v for k, v in rep64.items() if k not in ("trajectory", "per_device")},
    }
    print(f"  with chunks of 64 reads: chosen {run64.calibration.chosen}, c2c {v64.c2c:.3g}, write noise "
          f"{v64.write_noise:.3g} (rho {v64.write_noise_rho:.3f}); held-out NRMSE {rep64['nrmse']:.4f}, step spread "
          f"up {rep64['step_std_ratio_up']:.3f} down {rep64['step_std_ratio_down']:.3f}")
    cfg_units = CalibrationConfig(name="hfo2-gong-data-units", mapping=MappingSpec(g_range=(-1e-6, 1e-6)))
    run = calibrate_path(gong, "auto", None, cfg_units, replay=False)
    cal = run.calibration
    assert cal is not None
    ref = aihwkit_as_table()
    ours = run.model
    all_rows = cal.seq.mask(np.ones(len(cal.measurements), dtype=bool))
    held = cal.seq.mask(cal.heldout)
    n_ref, n_ours = model_nll(ref, cal.seq, all_rows), model_nll(ours, cal.seq, all_rows)
    ws = [-0.5, 0.0, 0.5]
    cmp = {
        "ours_model": cal.chosen,
        "ours_steps": step_table(ours, ws),
        "aihwkit_steps": {"up": aihwkit_reram_es(np.array(ws), True).tolist(), "down": aihwkit_reram_es(np.array(ws), False).tolist()},
        "ours_c2c_abs_at_0": float(ours.variation.c2c * abs(step_table(ours, [0.0])["up"][0])),
        "aihwkit_c2c_abs_at_0": float(5.0 * aihwkit_reram_es(np.array([0.0]), True)[0]),
        "ours_read_noise": ours.read_noise,
        "ours_write_noise": ours.variation.write_noise,
        "ours_write_noise_rho": ours.variation.write_noise_rho,
        "aihwkit_write_noise": 75 * 0.00135,
        "nll_all_rows": {"ours": n_ours, "aihwkit": n_ref, "reads": int(all_rows.sum())},
        "nll_heldout_rows": {"ours_train_model": model_nll(cal.train_model, cal.seq, held), "aihwkit": model_nll(ref, cal.seq, held)},
    }
    sym = {}
    for label, m in (("ours", ours), ("aihwkit", ref)):
        from hil.calibration.pipeline import model_summary

        sym[label] = model_summary(m)
    cmp["summary"] = sym
    reps = replay_copies(ref, cal.measurements, cal.mapping, 64)
    cmp["aihwkit_in_sample_replay"] = {k: v for k, v in replay_metrics(cal.measurements, reps).items() if k != "per_device"}
    ours_reps = replay_copies(ours, cal.measurements, cal.mapping, 64)
    cmp["ours_in_sample_replay"] = {k: v for k, v in replay_metrics(cal.measurements, ours_reps).items()
                                    if k != "per_device"}
    # the file is in units of 1e-6 S here (g per unit): mean square change in file units^2
    unit2 = 1e-12
    cmp["mean_square_change"] = {
        label: {k: v / unit2 for k, v in msq_change(sets).items()}
        for label, sets in (("measured", [cal.measurements]), ("ours", ours_reps), ("aihwkit", reps))
    }
    cmp["parameters_file_units"] = {k: getattr(ours.step, k) for k in ours.step.parameters}
    cmp["c2c"] = ours.variation.c2c
    results["hfo2_vs_aihwkit"] = cmp
    print("\n--- HfO2 fit in the file's units vs aihwkit ReRamESPresetDevice (mean step at w = -0.5, 0, +0.5)")
    print(f"  ours ({cal.chosen}): up {np.round(cmp['ours_steps']['up'], 5)}, down {np.round(cmp['ours_steps']['down'], 5)}")
    print(f"  aihwkit (exp)  : up {np.round(cmp['aihwkit_steps']['up'], 5)}, down {np.round(cmp['aihwkit_steps']['down'], 5)}")
    print(f"  accumulating noise per pulse at w=0: ours {cmp['ours_c2c_abs_at_0']:.4f}, aihwkit {cmp['aihwkit_c2c_abs_at_0']:.4f}")
    wn = ours.variation
    mem = -1.0 / np.log(wn.write_noise_rho) if 0 < wn.write_noise_rho < 1 else 0.0
    print(f"  non-accumulating noise: ours read {ours.read_noise:.4f} + write-noise offset {wn.write_noise:.4f} "
          f"(rho {wn.write_noise_rho:.3f}, memory {mem:.1f} pulses); aihwkit write_noise {75 * 0.00135:.4f} "
          "(redrawn at every pulse)")
    print(f"  symmetry point / dw_min / states: ours {sym['ours']}, aihwkit {sym['aihwkit']}")
    print(f"  NLL on all {all_rows.sum()} reads (our filter): ours {n_ours:.1f}, aihwkit {n_ref:.1f}")
    print(f"  ours ({cal.chosen}) in file units: {cmp['parameters_file_units']}, c2c {ours.variation.c2c:.4g}")
    print(format_metrics(cmp["aihwkit_in_sample_replay"], "  aihwkit preset replayed in-sample (64 copies):"))
    print(format_metrics(cmp["ours_in_sample_replay"], f"  ours ({cal.chosen}, file units) replayed in-sample (64 copies):"))
    print("  mean square change over k pulses within a sweep (file units^2; accumulating noise grows with k):")
    for label, v in cmp["mean_square_change"].items():
        print(f"    {label:<9} " + "  ".join(f"k={k}: {x:.4f}" for k, x in v.items()))

    # ---- ferroelectric amplitude sweeps (the largest set: the timing target)
    results["ferro"], cal_f = run_set("ferro", args.data / "ferro-hzo-ampsweep", args.out,
                                      CalibrationConfig(name="ferro-hzo"), in_sample=not args.quick,
                                      seeds=args.replay_seeds)

    by_width = response_by_width(cal_f)
    results["ferro_response_by_width"] = by_width
    print("\n--- ferro: measured mean change per pulse of |amplitude| < 1 V pulses, by pulse width (x range)")
    for r in by_width:
        up = "-" if r["mean_change_up"] is None else f"{r['mean_change_up']:+.4f}"
        dn = "-" if r["mean_change_down"] is None else f"{r['mean_change_down']:+.4f}"
        print(f"  {r['width_s']:8.0e} s: {r['pulses']:>4} pulses, up {up:>8}, down {dn:>8}, "
              f"held out {r['heldout_fraction']:.0%}")
    smooth = step_smoothness(cal_f)
    results["ferro_step_smoothness"] = smooth
    print("\n--- ferro: smoothness of the measured curves (x range, within runs, one polarity at a time)")
    print(f"  first difference: std {smooth['first_std']:.4f}, median |.| {smooth['first_median_abs']:.4f}; second "
          f"difference: std {smooth['second_std']:.4f}, median |.| {smooth['second_median_abs']:.4f}")
    windows = window_by_run(cal_f)
    results["ferro_window_by_run"] = windows
    print("\n--- ferro: conductance window of each run, 1st-99th percentile in nS (f fitting, h held out)")
    for dev, runs in windows.items():
        print(f"  {dev:<16} " + " ".join(
            f"{r['cycle']}{'h' if r['heldout'] else 'f'}:{r['g_low_s'] * 1e9:.3g}-{r['g_high_s'] * 1e9:.3g}" for r in runs))
    law = law_experiment(cal_f)
    results["ferro_pulse_law"] = law
    if law is not None:
        h = law["heldout_replay"]
        print("\n--- ferro: the calibration's pulse law (KAI / Merz) in the same pooled softbounds harness")
        print(f"  {'KAI / Merz law':<34} {law['parameters']:>2} parameters: BIC {law['bic']:10.1f} (identical pulses "
              f"{law['bic_identical']:.1f}), held-out replay NRMSE {h['nrmse']:.4f}, step spread up "
              f"{h['step_std_ratio_up']:.3f} down {h['step_std_ratio_down']:.3f}")
    per_dev = law_by_device(cal_f)
    results["ferro_law_by_device"] = per_dev
    if law is not None:
        b = law["law"]
        print(f"\n--- ferro: the law fitted to each device alone (softbounds, fitting rows); pooled: c2c "
              f"{b['softbounds_identical']['c2c']:.2f} identical pulses, {b['softbounds_with_law']['c2c']:.2f} with the law")
        for r in per_dev["devices"]:
            u, dn = r["up"], r["down"]
            print(f"  {r['device']:<16} {r['reads']:>4} reads: c2c {r['c2c_identical']:.2f} -> {r['c2c_law']:.2f}, BIC "
                  f"{r['bic_change']:+8.1f}; up log10 t0 {u['log10_t0_s']:6.2f} V_a {u['activation_v']:5.2f} n "
                  f"{u['exponent']:.2f} alpha {u['field_exponent']:.2f}; down log10 t0 {dn['log10_t0_s']:6.2f} V_a "
                  f"{dn['activation_v']:5.2f} n {dn['exponent']:.2f} alpha {dn['field_exponent']:.2f}")
        h = per_dev["heldout_replay_own_fits"]
        if h is not None:
            print(f"  held-out replay, every device with its own fit: NRMSE {h['nrmse']:.4f}, step spread up "
                  f"{h['step_std_ratio_up']:.3f} down {h['step_std_ratio_down']:.3f}; per device "
                  + ", ".join(f"{k} {v['nrmse']:.3f}" for k, v in h["per_device"].items()))
    # the pipeline without the law (every pulse the same pulse), for comparison
    run_none = calibrate_path(args.data / "ferro-hzo-ampsweep", "auto", None,
                              CalibrationConfig(name="ferro-hzo-identical", pulse_response="none"), replay=False)
    assert run_none.calibration is not None
    rep_none = replay_check(run_none.calibration)
    results["ferro_without_pulse_law"] = {
        "chosen": run_none.calibration.chosen,
        "heldout_replay": {k: v for k, v in rep_none.items() if k not in ("trajectory", "per_device", "amplitude_groups")},
    }
    print(f"\n--- ferro: hil calibrate --pulse-response none (identical pulses): chosen {run_none.calibration.chosen}, "
          f"held-out NRMSE {rep_none['nrmse']:.4f}, step spread up {rep_none['step_std_ratio_up']:.3f} down "
          f"{rep_none['step_std_ratio_down']:.3f}")
    for by, key in (("amplitude", "ferro_amplitude_factors"), ("width", "ferro_width_factors")):
        exp = step_factor_experiment(cal_f, by)
        results[key] = exp
        print(f"\n--- ferro: a step scale per {by} group? (pooled softbounds, fitting rows; held-out runs)")
        for label, r in exp.items():
            h = r["heldout_replay"]
            print(f"  {label:<34} {r['parameters']:>2} parameters: BIC {r['bic']:10.1f}, held-out NLL "
                  f"{r['nll_heldout']:9.1f}, held-out replay NRMSE {h['nrmse']:.4f}, step spread up "
                  f"{h['step_std_ratio_up']:.3f} down {h['step_std_ratio_down']:.3f}")
            if len(set(r["factors_up"] + r["factors_down"])) > 1:
                print(f"    factors ({', '.join(r['groups'])}; reference {r['reference_group']}) up "
                      f"{np.round(r['factors_up'], 3).tolist()}, down {np.round(r['factors_down'], 3).tolist()}")

    # ---- ENODe lookup table
    lut = args.data / "enode-ecram-lut"
    t0 = time.perf_counter()
    run = calibrate_path(lut, "auto", None, CalibrationConfig(name="enode"), replay=False)
    run.model.save(args.out / "enode-table.json")
    results["enode"] = {"imported_model": run.model.step.model, "seconds": time.perf_counter() - t0}
    print(f"\n=== enode: {lut}: imported as a {run.model.step.model} model (no fit) in {results['enode']['seconds']:.2f} s")
    if not args.quick:
        res, _ = run_set("enode-sampled", lut, args.out, CalibrationConfig(name="enode-sampled", model="auto"), in_sample=True,
                      fmt="crosssim-lut", fit_samples=True)
        results["enode_sampled"] = res
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(jsonable(results), indent=2))
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
