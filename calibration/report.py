"""Fit report: a text summary, a PNG figure and a JSON file (``--report DIR``).

The figure (matplotlib, Agg backend) has four panels:

1. measured conductance vs pulse number for the device with the most reads, with
   the fitted model's noise-free trajectory (its own fitted parameters, restarted
   from the measured value at every segment start), held-out rows shaded;
2. step size vs state for up and down pulses: the measured steps against the
   filtered state before each pulse (binned means with standard errors), the
   nominal model's mean step and each device's fitted curve;
3. histogram of the standardized residuals (filter innovations / their std) on
   the fitting and the held-out rows, with the standard normal density;
4. the held-out mean trajectory, measured and replayed on the simulator.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from hil.calibration.compare import format_metrics
from hil.calibration.filter import gaussian_nll, run_filter
from hil.calibration.fit import NOISE_NAMES
from hil.calibration.pipeline import Calibration, jsonable
from hil.calibration.stepmodels import clip
from hil.config import VersionedFile, atomic_write_text


class FitReport(VersionedFile):
    """``report.json``: the figures of a calibration run."""

    SCHEMA_VERSION = "1.3"
    schema_version: str = Field(
        "1.3", description="1.1 added pulse_law, 1.2 noise_match, 1.3 pulse_law's field exponent"
    )
    chosen_model: str
    inputs: list[dict[str, str]] = Field(default_factory=list)
    format: str = ""
    rows: int = 0
    devices: int = 0
    exclusions: list[dict[str, Any]] = Field(default_factory=list)
    mapping: dict[str, Any] = Field(default_factory=dict)
    heldout: dict[str, Any] = Field(default_factory=dict)
    read_noise: dict[str, Any] = Field(default_factory=dict)
    candidates: list[dict[str, Any]] = Field(default_factory=list)
    parameters: dict[str, dict[str, Any]] = Field(default_factory=dict)
    summary: dict[str, float] = Field(default_factory=dict)
    replay: dict[str, Any] | None = None
    reference: dict[str, Any] = Field(default_factory=dict)
    pulse_law: dict[str, Any] | None = Field(
        None, description="the pulse-response law's fit (calibration/pulse_law.py), where the pulses had shapes"
    )
    noise_match: dict[str, Any] | None = Field(
        None, description="the noise match (calibration/noise_match.py): the factor on the likelihood's noise terms"
    )
    notes: list[str] = Field(default_factory=list)
    seconds: dict[str, float] = Field(default_factory=dict)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not np.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}"
    return str(v)


def text_summary(cal: Calibration, reference: dict[str, Any] | None = None) -> str:
    ms = cal.measurements
    m = cal.model
    prov = m.provenance
    lines = ["crossbar-hil calibration report", "=" * 31, ""]
    lines.append(f"input: {ms.source}  (format {prov.get('format')})")
    for inp in ms.inputs[:6]:
        lines.append(f"  {inp['path']}  sha256 {inp['sha256']}")
    if len(ms.inputs) > 6:
        lines.append(f"  ... and {len(ms.inputs) - 6} more files (all in report.json)")
    cycles = len({(str(d), int(c)) for d, c in zip(ms.device, ms.cycle, strict=True)})
    lines.append(f"rows {len(ms)}, devices {len(ms.devices)}, device-cycles {cycles}")
    if ms.exclusions:
        for e in ms.exclusions:
            lines.append(f"excluded: {e.rows} rows by rule '{e.rule}' {e.detail}")
    else:
        lines.append("excluded rows: none")
    mp = cal.mapping
    lines.append(
        f"mapping: {mp.model.kind}, G = {mp.model.g_min_s:.4g} S at w = {mp.model.w_min:g}, "
        f"{mp.model.g_max_s:.4g} S at w = {mp.model.w_max:g}; {mp.rule}"
    )
    lines.append(
        f"held out: {int(cal.heldout.sum())} rows ({cal.heldout_unit}, fraction {cal.config.holdout_fraction:.3g})"
    )
    lines.append(f"read noise: {cal.read_noise['method']}")
    lines.append("")
    lines.append("model selection (per-device fits on the fitting rows; held-out NLL: each read predicted from all earlier ones)")
    lines.append(
        f"  {'model':<11}{'k':>5}{'NLL fit':>12}{'BIC':>12}{'AIC':>12}{'NLL held-out':>14}{'margin':>9}"
        "  determined  eligible"
    )
    for c in cal.candidates:
        mark = "  <- chosen" if c.model == cal.chosen else ""
        lines.append(
            f"  {c.model:<11}{c.k:>5}{c.nll_train:>12.1f}{c.bic:>12.1f}{c.aic:>12.1f}"
            f"{_fmt(c.nll_heldout, 7):>14}{_fmt(c.heldout_margin, 3):>9}  {'yes' if c.determined else 'NO':<10}"
            f"  {'yes' if c.eligible else 'no'}{mark}"
        )
    for c in cal.candidates:
        if not c.determined:
            lines.append(f"  {c.model} not determined by the data: " + "; ".join(c.undetermined))
        if c.bounds_at_reads:
            lines.append(f"  {c.model}: hard bound not reached by the fitting reads, set at the extreme reads: "
                         + "; ".join(c.bounds_at_reads))
    lines.append(
        "  chosen: the lowest BIC among determined models whose held-out NLL is within the margin of the best "
        "determined model's"
    )
    lines.append("")
    lines.append(f"chosen: {cal.chosen} (normalized weight units; siemens via the mapping)")
    scale = float(mp.scale()[0])
    lines.append(f"  {'parameter':<14}{'value':>12}{'std. error':>12}{'d2d':>9}{'pooled fit':>12}{'in siemens':>14}")
    for name, row in cal.parameters.items():
        siemens = ""
        if name.startswith("dw_") and cal.chosen != "table":
            siemens = f"{row['value'] * scale:.4g}"
        elif name in ("w_min", "w_max"):
            siemens = f"{float(mp.to_conductance(np.array([row['value']]))[0]):.4g}"
        elif name in ("read_sd", "write_sd"):
            siemens = f"{row['value'] * scale:.4g}"
        lines.append(
            f"  {name:<14}{_fmt(row['value']):>12}{_fmt(row.get('se')):>12}{_fmt(row.get('d2d'), 3):>9}"
            f"{_fmt(row.get('pooled')):>12}{siemens:>14}"
        )
    s = prov.get("summary", {})
    lines.append(
        f"  symmetry point {_fmt(s.get('symmetry_point'))}, step there (dw_min) {_fmt(s.get('dw_min'))} "
        f"({_fmt(prov.get('summary_siemens', {}).get('dw_min_s'))} S), states {_fmt(s.get('n_states'))}"
    )
    lines.append(f"  device model: c2c {m.variation.c2c:.4g}, read noise {m.read_noise:.4g}, d2d {dict((k, round(v, 4)) for k, v in m.variation.d2d.items())}")
    v = m.variation
    if v.write_noise > 0:
        mem = -1.0 / np.log(v.write_noise_rho) if v.write_noise_rho > 0 else 0.0
        lines.append(
            f"  write-noise offset (non-accumulating): std {v.write_noise:.4g}, correlation per pulse "
            f"{v.write_noise_rho:.4g} (memory {mem:.3g} pulses)"
        )
    if cal.pulse_law is not None:
        law = cal.pulse_law
        r = law.response
        lines.append(
            f"  pulse response (KAI / Merz law, fitted with a pooled softbounds model on the fitting rows): BIC "
            f"{law.bic_change:+.1f} over identical pulses, {'used' if law.used else 'not used'}; field exponent "
            + (f"fitted (BIC {law.field_exponent_bic_change:+.1f} over Merz's alpha = 1)" if law.field_exponent_used
               else "Merz's alpha = 1 (not fitted: --pulse-response merz)" if np.isnan(law.nll_free)
               else f"Merz's alpha = 1 (a fitted one changes the BIC by {law.field_exponent_bic_change:+.1f})")
        )
        for d, sw, nom in (("up", r.up, r.nominal_up), ("down", r.down, r.nominal_down)):
            se = {k.split("_", 1)[1]: v for k, v in law.se.items() if k.startswith(d + "_")}
            loose = se.get("log10_t0_s", 0.0) > 3.0  # decades: t0 trades off with V_a
            alpha = (f", alpha {sw.field_exponent:.4g} (se {_fmt(se.get('field_exponent'))})"
                     if law.field_exponent_used else "")
            fixed = "n V_a" if sw.field_exponent == 1.0 else "n V_a^alpha"
            lines.append(
                f"    {d}: log10 t0 {sw.log10_t0_s:.4g} (se {_fmt(se.get('log10_t0_s'))}), V_a {sw.activation_v:.4g} V "
                f"(se {_fmt(se.get('activation_v'))}), n {sw.exponent:.4g} (se {_fmt(se.get('exponent'))}){alpha}; "
                f"nominal pulse {nom.amplitude_v:.4g} V x {nom.width_s:.4g} s"
                + (f"; t0 not determined (these pulses never saturate): {fixed} = "
                   f"{sw.exponent * sw.activation_v ** sw.field_exponent:.3g} V"
                   + ("" if sw.field_exponent == 1.0 else "^alpha")
                   + (" and n are" if sw.field_exponent == 1.0 else ", n and alpha are") + " what the data fix"
                   if loose else "")
            )
    if cal.noise_match is not None:
        lines.append("  " + cal.noise_match.line()
                     + (" (the parameter table above holds the likelihood's values)" if cal.noise_match.applied else ""))
    for c in cal.candidates:
        wf = c.write_noise_fit
        if wf and "bic_gain" in wf:
            verdict = "used" if c.write_noise else ("not determined: " + "; ".join(wf.get("undetermined") or [])
                                                    if wf.get("undetermined") else "no BIC gain")
            lines.append(
                f"  {c.model}: with the write-noise offset (std {_fmt(wf.get('write_sd'))}, rho {_fmt(wf.get('write_rho'))}) "
                f"the pooled BIC changes by {-float(wf['bic_gain']):+.1f}: {verdict}"
            )
    if cal.replay is not None:
        lines.append("")
        lines.append(f"replay of the model fitted on the fitting rows, scored on the held-out rows ({cal.heldout_unit}):")
        lines.append(format_metrics(cal.replay))
    if reference:
        lines.append("")
        lines.append("reference fits from the data's source (not used by the fit):")
        for key, val in reference.items():
            if key == "author_fits" and isinstance(val, dict):
                lines.append(f"  {key}: the author's NeuroSim fits of {len(val)} runs (A_LTP, NL_LTP, ... in report.json)")
            else:
                lines.append(f"  {key}: {val}")
    if cal.notes:
        lines.append("")
        lines.append("notes:")
        for n in cal.notes:
            lines.append(f"  - {n}")
    lines.append("")
    lines.append("time: " + ", ".join(f"{k} {v:.2f} s" for k, v in cal.seconds.items()))
    return "\n".join(lines) + "\n"


def model_trajectory(cal: Calibration, device: int) -> np.ndarray:
    """Noise-free trajectory (weights) of ``device`` with its fitted parameters, one value per
    row of that device, restarted at the measured value at every segment start."""
    ms = cal.measurements
    codes, _ = ms.device_codes()
    idx = np.nonzero(codes == device)[0]
    starts = ms.segment_starts()
    fit = cal.per_device if cal.per_device is not None else cal.pooled
    p = {}
    for k, v in fit.values.items():
        if k in NOISE_NAMES:
            continue
        p[k] = np.asarray(v[device] if len(v) > 1 else v[0], dtype=float).reshape(1, 1)
    fam = cal.family
    p = fam.prepare(p)
    lo, hi = fam.bounds_of(p)
    out = np.empty(len(idx))
    x = np.zeros((1, 1))
    law = cal.model.pulse_response
    scale = np.ones(len(ms))
    if law is not None:
        amp, width = np.abs(ms.optional["amplitude_v"]), ms.optional["width_s"]
        pulse = ms.polarity != 0
        for up in (True, False):
            sel = pulse & ((ms.polarity > 0) == up)
            scale[sel] = law.scale_np(amp[sel], width[sel], up)
    for j, i in enumerate(idx):
        if starts[i]:
            x = clip(np.full((1, 1), cal.weights[i]), lo, hi)
        elif ms.polarity[i] != 0:
            pi = p if scale[i] == 1.0 else {**p, "dw_up": p["dw_up"] * scale[i], "dw_down": p["dw_down"] * scale[i]}
            xn, _, _, _ = fam.transition(x, bool(ms.polarity[i] > 0), pi)
            x = clip(xn, lo, hi)
        out[j] = float(x[0, 0])
    return out


def _filtered_steps(cal: Calibration) -> tuple[Any, np.ndarray, np.ndarray]:
    """The fit's filter over every sequence (``keep_state``), the filtered state before each
    read and the measured change to it (both ``[S, T]``, normalized weight)."""
    fit = cal.per_device if cal.per_device is not None else cal.pooled
    seq = cal.seq
    pr, c2c, rv = fit.param_arrays(seq)
    out = run_filter(seq, cal.family, pr, c2c, rv, keep_state=True, **fit.write_arrays(seq))
    assert out.state is not None
    state = out.state[0]
    prev = np.concatenate([state[:, :1], state[:, :-1]], axis=1)
    step = seq.y - np.concatenate([seq.y[:, :1], seq.y[:, :-1]], axis=1)
    return out, prev, step


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_figure(cal: Calibration, path: str | os.PathLike[str], steps: Any = None) -> Path:
    """``report.png``; ``steps``: :func:`_filtered_steps` of ``cal`` if already computed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = cal.measurements
    codes, names = ms.device_codes()
    mp = cal.mapping
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    fig.suptitle(f"{cal.chosen} model fitted to {Path(ms.source).name}", fontsize=11)

    # 1. trajectory of the device with the most reads
    d = int(np.bincount(codes).argmax())
    idx = np.nonzero(codes == d)[0]
    ax = axes[0, 0]
    x_pulse = np.arange(len(idx))
    traj_w = model_trajectory(cal, d)
    traj_g = mp.to_conductance(traj_w, ms.device[idx])
    ax.plot(x_pulse, ms.conductance[idx], ".", ms=2, color="0.55", label="measured")
    ax.plot(x_pulse, traj_g, "-", lw=1.2, color="C3", label=f"fitted {cal.chosen} (noise-free)")
    held = cal.heldout[idx]
    if held.any():
        ax.fill_between(x_pulse, 0, 1, where=held, color="C0", alpha=0.08, transform=ax.get_xaxis_transform(), label="held out")
    ax.set_xlabel(f"row of device {names[d]} (pulse order)")
    ax.set_ylabel("conductance (S)")
    ax.set_title("measured vs fitted conductance")
    ax.legend(fontsize=8, loc="best")

    # 2. step vs state
    ax = axes[0, 1]
    seq = cal.seq
    out, prev, step = steps if steps is not None else _filtered_steps(cal)
    score = seq.mask(np.ones(len(ms), dtype=bool))
    grid = np.linspace(np.percentile(seq.y[seq.valid], 0.5), np.percentile(seq.y[seq.valid], 99.5), 200)
    nominal = {k: np.asarray(v).reshape(1, 1) for k, v in _nominal_params(cal).items()}
    nominal = cal.family.prepare(nominal)
    for pol, color, label in ((1, "C2", "up"), (-1, "C1", "down")):
        sel = score & (seq.pol == pol)
        xs, ys = prev[sel], step[sel]
        if len(xs) == 0:
            continue
        ax.plot(xs, ys, ".", ms=1.5, alpha=0.15, color=color)
        edges = np.linspace(grid[0], grid[-1], 21)
        which = np.clip(np.digitize(xs, edges) - 1, 0, 19)
        cnt = np.bincount(which, minlength=20)
        ok = cnt >= 3
        mean = np.bincount(which, weights=ys, minlength=20)[ok] / cnt[ok]
        sq = np.bincount(which, weights=ys * ys, minlength=20)[ok] / cnt[ok]
        sem = np.sqrt(np.maximum(sq - mean**2, 0) / cnt[ok])
        centers = 0.5 * (edges[1:] + edges[:-1])[ok]
        ax.errorbar(centers, mean, yerr=sem, fmt="o", ms=3, color=color, label=f"measured {label} (binned)")
        curve = cal.family.mean_step(grid.reshape(1, -1), pol > 0, {k: v.reshape(1, 1) if v.ndim < 3 else v for k, v in nominal.items()})
        law = cal.model.pulse_response
        if law is None:
            what = "nominal"
        else:
            nom = law.nominal_up if pol > 0 else law.nominal_down
            what = f"nominal device and pulse, {nom.amplitude_v:.3g} V x {nom.width_s:.2g} s"
        ax.plot(grid, curve[0], "-", color=color, lw=2, label=f"fitted {label} ({what})")
        if cal.per_device is not None:
            for dd in range(min(seq.n_devices, 20)):
                pd = {
                    k: np.asarray(v[dd], dtype=float).reshape(1, 1)
                    for k, v in cal.per_device.values.items()
                    if k not in NOISE_NAMES
                }
                pd = cal.family.prepare(pd)
                ax.plot(grid, cal.family.mean_step(grid.reshape(1, -1), pol > 0, pd)[0], "-", color=color, lw=0.5, alpha=0.4)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("state before the pulse (normalized weight, filtered)")
    ax.set_ylabel("step (normalized weight)")
    ax.set_title("step vs state (thin lines: per-device fits)")
    ax.legend(fontsize=7, loc="best")

    # 3. residual histogram
    ax = axes[1, 0]
    z = out.nu[0] / np.sqrt(out.var[0])
    held_m = seq.mask(cal.heldout)
    fit_m = seq.mask(~cal.heldout)
    bins = np.linspace(-5, 5, 61)
    ax.hist(np.clip(z[fit_m], -5, 5), bins=bins, density=True, alpha=0.6, label="fitting rows")
    if held_m.any():
        ax.hist(np.clip(z[held_m], -5, 5), bins=bins, density=True, alpha=0.5, label="held-out rows")
    zz = np.linspace(-5, 5, 200)
    ax.plot(zz, np.exp(-0.5 * zz * zz) / np.sqrt(2 * np.pi), "k-", lw=1, label="N(0, 1)")
    nll = gaussian_nll(out.nu[0][fit_m], out.var[0][fit_m]).mean()
    ax.set_title(f"standardized residuals (NLL/read on fitting rows {nll:.3f})")
    ax.set_xlabel("innovation / its std")
    ax.legend(fontsize=8)

    # 4. held-out replay
    ax = axes[1, 1]
    rep = cal.replay
    if rep is not None and "trajectory" in rep:
        t = rep["trajectory"]
        ax.plot(t["measured"], "-", color="0.3", label="measured (held-out mean)")
        ax.plot(t["replayed"], "-", color="C3", label="replayed on the simulator")
        ax.set_title(f"held-out mean trajectory: NRMSE {rep['nrmse']:.3f}, step std ratio "
                     f"{rep.get('step_std_ratio_up', float('nan')):.2f} up / {rep.get('step_std_ratio_down', float('nan')):.2f} down")
        ax.set_xlabel("position within the cycle (held-out rows)")
        ax.set_ylabel("conductance / device range")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no held-out replay", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    return _save(fig, path)


def write_law_figure(cal: Calibration, path: str | os.PathLike[str], steps: Any = None) -> Path | None:
    """``pulse_law.png`` where the calibration kept a pulse law: per direction, the fitted law's
    step scale ``f(|V|, t) / f(nominal)`` against ``|V|`` for every pulse width of the file
    (lines), and the measured one (points): in each width and amplitude bin, the sum of the
    measured steps over the sum of the nominal device's step for a nominal pulse at each pulse's
    filtered state before it (the model's mean step is the law's scale times that step).  None
    (nothing written) without a law."""
    from hil.calibration.pulse_law import pulse_shapes

    law = cal.pulse_law
    shapes = pulse_shapes(cal.measurements)
    if law is None or not law.used or shapes is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    amp_rows, width_rows = shapes
    seq = cal.seq
    _, prev, step = steps if steps is not None else _filtered_steps(cal)
    first = np.zeros(seq.shape, dtype=bool)
    first[:, 0] = True
    ok = seq.valid & (seq.row >= 0) & (seq.pol != 0) & ~first & ~seq.reset
    nominal = cal.family.prepare({k: np.asarray(v).reshape(1, 1) for k, v in _nominal_params(cal).items()})
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    fig.suptitle(f"pulse law of {Path(cal.measurements.source).name}: step scale against |amplitude|", fontsize=11)
    widths = np.unique(width_rows[cal.measurements.polarity != 0])
    colors = plt.cm.viridis(np.linspace(0.0, 0.9, len(widths)))
    r = law.response
    for ax, pol, name in ((axes[0], 1, "up"), (axes[1], -1, "down")):
        sel = ok & (seq.pol == pol)
        rows = seq.row[sel]
        amp, wid, xs, ys = amp_rows[rows], width_rows[rows], prev[sel], step[sel]
        s0 = np.abs(cal.family.mean_step(xs.reshape(1, -1), pol > 0, nominal)[0])
        v_grid = np.linspace(max(float(amp.min()) if len(amp) else 0.1, 0.05), float(amp.max()) if len(amp) else 5.0, 200)
        measured: list[float] = []
        top = 0.0
        for w, color in zip(widths, colors, strict=True):
            curve = r.scale_np(v_grid, w, pol > 0)
            top = max(top, float(curve.max()))
            ax.plot(v_grid, curve, "-", color=color, lw=1.2)
            mine = wid == w
            if mine.sum() < 3:
                continue
            edges = np.unique(np.quantile(amp[mine], np.linspace(0, 1, min(8, int(mine.sum() // 3)) + 1)))
            which = np.clip(np.digitize(amp[mine], edges[1:-1]), 0, len(edges) - 2)
            num = np.bincount(which, weights=pol * ys[mine], minlength=len(edges) - 1)
            den = np.bincount(which, weights=s0[mine], minlength=len(edges) - 1)
            centers = np.bincount(which, weights=amp[mine], minlength=len(edges) - 1) / np.maximum(
                np.bincount(which, minlength=len(edges) - 1), 1)
            good = (den > 0) & (num > 0)
            measured += (num[good] / den[good]).tolist()
            ax.plot(centers[good], num[good] / den[good], "o", ms=4, color=color, label=f"{w:.2g} s")
        nom = r.nominal_up if pol > 0 else r.nominal_down
        law_d = r.law_of(pol > 0)
        ax.set_yscale("log")
        # the law falls to nothing below a threshold (alpha > 1): show the range the data have
        lo = min(measured) / 10 if measured else 1e-3
        ax.set_ylim(lo, max(top, max(measured, default=top)) * 3)
        ax.set_xlabel("|amplitude| (V)")
        ax.set_ylabel("step / nominal step at the same state")
        ax.set_title(f"{name}: V_a {law_d.activation_v:.3g} V, n {law_d.exponent:.3g}, alpha {law_d.field_exponent:.3g}; "
                     f"nominal {nom.amplitude_v:.3g} V x {nom.width_s:.2g} s", fontsize=9)
        ax.legend(fontsize=6, title="width (points: measured, lines: law)", title_fontsize=7, loc="lower right",
                  ncol=2)
    return _save(fig, path)


def _nominal_params(cal: Calibration) -> dict[str, float]:
    return {k: float(v["value"]) for k, v in cal.parameters.items() if k not in NOISE_NAMES}


def build_report(cal: Calibration, reference: dict[str, Any] | None = None) -> FitReport:
    prov = cal.model.provenance
    rep = None
    if cal.replay is not None:
        rep = {k: v for k, v in cal.replay.items() if k != "trajectory"}
    return FitReport(
        chosen_model=cal.chosen,
        inputs=cal.measurements.inputs,
        format=str(prov.get("format", "")),
        rows=len(cal.measurements),
        devices=len(cal.measurements.devices),
        exclusions=[e.as_dict() for e in cal.measurements.exclusions],
        mapping=cal.mapping.provenance(),
        heldout={"unit": cal.heldout_unit, "rows": int(cal.heldout.sum()), "fraction": cal.config.holdout_fraction},
        read_noise=cal.read_noise,
        candidates=[c.model_dump() for c in cal.candidates],
        parameters=jsonable(cal.parameters),
        summary=prov.get("summary", {}),
        replay=jsonable(rep),
        reference=jsonable(reference or {}),
        pulse_law=jsonable(cal.pulse_law.as_dict()) if cal.pulse_law is not None else None,
        noise_match=jsonable(cal.noise_match.as_dict()) if cal.noise_match is not None else None,
        notes=cal.notes,
        seconds=cal.seconds,
    )


def write_report(cal: Calibration, directory: str | os.PathLike[str], reference: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``report.txt``, ``report.png`` and ``report.json`` into ``directory`` (and
    ``pulse_law.png`` where the calibration kept a pulse law: :func:`write_law_figure`)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    text = text_summary(cal, reference)
    steps = _filtered_steps(cal)  # one filter run for both figures
    paths = {
        "text": atomic_write_text(d / "report.txt", text),
        "figure": write_figure(cal, d / "report.png", steps),
        "json": build_report(cal, reference).save(d / "report.json"),
    }
    law_png = write_law_figure(cal, d / "pulse_law.png", steps)
    if law_png is not None:
        paths["law_figure"] = law_png
    return paths
