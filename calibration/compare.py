"""Measured vs replayed: the two figures of merit of a fitted model on held-out rows.

Both files must be row-aligned (``hil characterize --replay`` writes one row per
input row, in order, with the same device/cycle/pulse/polarity).

- **Normalized RMSE of the mean trajectory.**  Every read is normalized by its
  device's measured conductance range, ``u = (G - G_1%) / (G_99% - G_1%)`` (1st and
  99th percentile of all reads of that device, measured file); ``u`` at each
  position within a cycle is averaged over the selected cycles of all devices
  (measured and replayed separately), and the RMSE between the two mean
  trajectories is the figure.  Target: below 0.10.  A fitted device model describes
  a *population* (its device-to-device spread is drawn at random), so replayed
  device ``i`` is not measured device ``i``: the population mean is what it can
  reproduce.  The device-matched figure (the same per device, root mean square over
  devices) is reported beside it; for one device the two coincide.
- **Spread of the per-pulse change.**  The change of conductance from the previous
  read of the same device, for every selected pulse row (not a segment start),
  divided by the device range; its standard deviation replayed / measured, for up
  and down pulses separately.  Target: within a factor 1.5 (0.667 to 1.5).

Two figures put these in context (information, not targets):

- **noise floor of the trajectory RMSE** (with several replays): the normalized RMSE
  between *one* replayed realization and the model's expected trajectory (the mean of
  the other replays, rescaled to the RMSE against the exact mean), median and 95th
  percentile over the replays.  The measured file is one realization too, so an exactly
  right model scores about this against it: with one device and one cycle (the HfO2
  file) it can exceed the 0.10 target by itself, and a measured value below the 95th
  percentile says the model's error is not detectable in this data.
- **per amplitude group** (when the file has ``amplitude_v``): the step-spread ratio by
  |amplitude| (edges ``AMPLITUDE_EDGES_V``), which shows what an identical-pulse model
  averages over when the measurement sweeps the amplitude.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hil.calibration.measurements import MeasurementSet

NRMSE_TARGET = 0.10
STD_RATIO_TARGET = 1.5
AMPLITUDE_EDGES_V = (0.0, 1.0, 2.0, 3.0, float("inf"))
MIN_FLOOR_REPLAYS = 4


def check_aligned(measured: MeasurementSet, simulated: MeasurementSet) -> None:
    """Raise ``ValueError`` naming the first row where the files disagree."""
    if len(measured) != len(simulated):
        raise ValueError(
            f"{simulated.source} has {len(simulated)} rows, {measured.source} has {len(measured)}: "
            "a replay writes one row per measured row"
        )
    for col in ("cycle", "pulse", "polarity"):
        a, b = getattr(measured, col), getattr(simulated, col)
        bad = np.nonzero(a != b)[0]
        if len(bad):
            i = int(bad[0])
            raise ValueError(
                f"{simulated.source}:{simulated.where(i)}: {col} {b[i]} differs from {measured.source}:"
                f"{measured.where(i)} ({a[i]}): the files are not row-aligned"
            )
    bad = np.nonzero(measured.device.astype(str) != simulated.device.astype(str))[0]
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"{simulated.source}:{simulated.where(i)}: device {simulated.device[i]!r} differs from "
            f"{measured.device[i]!r}: the files are not row-aligned"
        )


def device_ranges(ms: MeasurementSet) -> dict[str, float]:
    """Per-device conductance range (99th - 1st percentile), siemens."""
    out = {}
    for d in ms.devices:
        g = ms.conductance[ms.device == d]
        lo, hi = np.percentile(g, [1.0, 99.0])
        out[d] = float(hi - lo) if hi > lo else float(abs(hi) or 1.0)
    return out


def previous_rows(codes: np.ndarray) -> np.ndarray:
    """For every row, the index of the previous row of the same device (-1 for a device's
    first row): ``codes [N]`` integer device codes in file order (``MeasurementSet.device_codes``)."""
    codes = np.asarray(codes)
    prev = np.full(len(codes), -1, dtype=np.int64)
    if len(codes) == 0:
        return prev
    order = np.argsort(codes, kind="stable")  # rows grouped by device, file order kept inside
    same = codes[order][1:] == codes[order][:-1]
    prev[order[1:][same]] = order[:-1][same]
    return prev


def replay_metrics(
    measured: MeasurementSet,
    simulated: MeasurementSet | Sequence[MeasurementSet],
    rows: np.ndarray | None = None,
) -> dict[str, Any]:
    """Figures of merit on the rows selected by ``rows`` (default: all rows).

    ``simulated`` may be several replays (other seeds): the replayed mean trajectory is
    then their average (the model's expected trajectory, not one noisy realization) and
    the spread of the per-pulse change is pooled over them.
    """
    reps = [simulated] if isinstance(simulated, MeasurementSet) else list(simulated)
    if not reps:
        raise ValueError("replay_metrics: no replayed file")
    for r in reps:
        check_aligned(measured, r)
    simulated = reps[0].subset(np.ones(len(reps[0]), dtype=bool))
    simulated.conductance = np.mean([r.conductance for r in reps], axis=0)
    n = len(measured)
    sel = np.ones(n, dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    ranges = device_ranges(measured)
    codes, names = measured.device_codes()
    starts = measured.segment_starts()
    prev = previous_rows(codes)
    per_device: dict[str, dict[str, float]] = {}
    nrmse_sq = []
    lo_of = {d: float(np.percentile(measured.conductance[measured.device == d], 1.0)) for d in names}
    pop_pos: list[np.ndarray] = []
    pop_m: list[np.ndarray] = []
    pop_s: list[np.ndarray] = []
    pop_rows: list[np.ndarray] = []
    pop_lo: list[np.ndarray] = []
    pop_scale: list[np.ndarray] = []
    has_amp = "amplitude_v" in measured.optional
    amp_steps: dict[str, list[np.ndarray]] = {"measured": [], "replayed": [], "amp": [], "pol": []}
    steps: dict[str, dict[int, list[np.ndarray]]] = {"measured": {1: [], -1: []}, "replayed": {1: [], -1: []}}
    for d, name in enumerate(names):
        idx = np.nonzero((codes == d) & sel)[0]
        if len(idx) == 0:
            continue
        scale = ranges[name]
        # position of each selected row within its cycle
        pos = np.zeros(len(idx), dtype=np.int64)
        counter: dict[int, int] = {}
        for j, i in enumerate(idx):
            c = int(measured.cycle[i])
            pos[j] = counter.get(c, 0)
            counter[c] = pos[j] + 1
        n_pos = int(pos.max()) + 1
        cnt = np.bincount(pos, minlength=n_pos)
        pop_pos.append(pos)
        pop_m.append((measured.conductance[idx] - lo_of[name]) / scale)
        pop_s.append((simulated.conductance[idx] - lo_of[name]) / scale)
        pop_rows.append(idx)
        pop_lo.append(np.full(len(idx), lo_of[name]))
        pop_scale.append(np.full(len(idx), scale))
        m_mean = np.bincount(pos, weights=measured.conductance[idx], minlength=n_pos) / cnt
        s_mean = np.bincount(pos, weights=simulated.conductance[idx], minlength=n_pos) / cnt
        rmse = float(np.sqrt(np.mean((m_mean - s_mean) ** 2)))
        nrmse = rmse / scale
        nrmse_sq.append(nrmse**2)
        per_device[name] = {"nrmse": nrmse, "rmse_s": rmse, "range_s": scale, "cycles": float(len(counter))}
        ok = (measured.polarity[idx] != 0) & ~starts[idx] & (prev[idx] >= 0)
        ii = idx[ok]
        for label, sets in (("measured", [measured]), ("replayed", reps)):
            for ms in sets:
                dg = (ms.conductance[ii] - ms.conductance[prev[ii]]) / scale
                for pol in (1, -1):
                    steps[label][pol].append(dg[measured.polarity[ii] == pol])
                if has_amp:
                    amp_steps[label].append(dg)
        if has_amp:
            for _ in reps:
                amp_steps["amp"].append(np.abs(measured.optional["amplitude_v"][ii]))
                amp_steps["pol"].append(measured.polarity[ii])
    nrmse_pop = float("nan")
    floor: list[float] = []
    if pop_pos:
        pos_all = np.concatenate(pop_pos)
        n_pos = int(pos_all.max()) + 1
        cnt = np.bincount(pos_all, minlength=n_pos)
        ok_pos = cnt > 0

        def trajectory(values: np.ndarray) -> np.ndarray:
            return np.bincount(pos_all, weights=values, minlength=n_pos)[ok_pos] / cnt[ok_pos]

        mm = trajectory(np.concatenate(pop_m))
        ss = trajectory(np.concatenate(pop_s))
        nrmse_pop = float(np.sqrt(np.mean((mm - ss) ** 2)))
        r = len(reps)
        if r >= MIN_FLOOR_REPLAYS:
            # one realization against the mean of the others; var(t_j - mean_others) is
            # r / (r - 1) times var(t_j - exact mean)
            rows_sel = np.concatenate(pop_rows)
            lo_sel = np.concatenate(pop_lo)
            sc_sel = np.concatenate(pop_scale)
            for rep in reps:
                tj = trajectory((rep.conductance[rows_sel] - lo_sel) / sc_sel)
                others = (r * ss - tj) / (r - 1)
                floor.append(float(np.sqrt(np.mean((tj - others) ** 2) * (r - 1) / r)))
    out: dict[str, Any] = {
        "replays": len(reps),
        "rows": int(sel.sum()),
        "devices": len(per_device),
        "nrmse": nrmse_pop,
        "nrmse_device_matched": float(np.sqrt(np.mean(nrmse_sq))) if nrmse_sq else float("nan"),
        "nrmse_worst_device": float(np.sqrt(max(nrmse_sq))) if nrmse_sq else float("nan"),
        "per_device": per_device,
    }
    for pol, key in ((1, "up"), (-1, "down")):
        m = np.concatenate(steps["measured"][pol]) if steps["measured"][pol] else np.zeros(0)
        s = np.concatenate(steps["replayed"][pol]) if steps["replayed"][pol] else np.zeros(0)
        if len(m) >= 2:
            sm, ss = float(np.std(m, ddof=1)), float(np.std(s, ddof=1))
            out[f"step_std_{key}_measured"] = sm
            out[f"step_std_{key}_replayed"] = ss
            out[f"step_std_ratio_{key}"] = ss / sm if sm > 0 else float("inf")
            out[f"steps_{key}"] = int(len(m))
    if floor:
        out["nrmse_noise_floor_median"] = float(np.median(floor))
        out["nrmse_noise_floor_p95"] = float(np.percentile(floor, 95))
        out["nrmse_within_noise"] = bool(out["nrmse"] <= out["nrmse_noise_floor_p95"])
    if has_amp and amp_steps["amp"]:
        out["amplitude_groups"] = _amplitude_groups(amp_steps, len(reps))
    out["pass_nrmse"] = bool(out["nrmse"] < NRMSE_TARGET)
    ratios = [out[k] for k in ("step_std_ratio_up", "step_std_ratio_down") if k in out]
    out["pass_step_std"] = bool(ratios) and all(1 / STD_RATIO_TARGET <= r <= STD_RATIO_TARGET for r in ratios)
    return out


def _amplitude_groups(amp_steps: dict[str, list[np.ndarray]], n_reps: int) -> list[dict[str, Any]]:
    """Step-spread ratio by |amplitude| group and polarity (``amp``/``pol`` are per replayed
    step; the measured steps are repeated once per replay so that they line up)."""
    rep = np.concatenate(amp_steps["replayed"])
    amp = np.concatenate(amp_steps["amp"])
    pol = np.concatenate(amp_steps["pol"])
    meas = np.concatenate([np.tile(m, n_reps) for m in amp_steps["measured"]])
    groups = []
    edges = AMPLITUDE_EDGES_V
    for p, key in ((1, "up"), (-1, "down")):
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            sel = (pol == p) & (amp >= lo) & (amp < hi)
            n = int(sel.sum()) // max(n_reps, 1)
            if n < 5:
                continue
            sm, sr = float(np.std(meas[sel], ddof=1)), float(np.std(rep[sel], ddof=1))
            groups.append({"polarity": key, "amplitude_v": [lo, hi], "steps": n, "mean_measured": float(meas[sel].mean()),
                           "mean_replayed": float(rep[sel].mean()), "std_measured": sm, "std_replayed": sr,
                           "ratio": sr / sm if sm > 0 else float("inf")})
    return groups


def protocol_shift(ms: MeasurementSet, held: np.ndarray) -> dict[str, Any] | None:
    """How the held-out pulses differ from the fitting pulses in width and amplitude (information).

    For the optional columns ``width_s`` and ``amplitude_v``: their range over the fitting and
    the held-out pulse rows, and the fraction of held-out pulses whose value (|amplitude|)
    lies outside what that device's fitting rows span (widths: a value none of its fitting
    pulses had).  Also the measured mean change per pulse (range-normalized, as
    :func:`replay_metrics`) on the fitting and the held-out rows, per polarity.  An
    identical-pulse model fitted on one protocol is asked to predict another where these
    differ.  None without either column or without held-out pulses.
    """
    cols = [c for c in ("width_s", "amplitude_v") if c in ms.optional]
    pulse = ms.polarity != 0
    held = np.asarray(held, dtype=bool)
    if not cols or not (held & pulse).any() or not (~held & pulse).any():
        return None
    codes, names = ms.device_codes()
    out: dict[str, Any] = {}
    for col in cols:
        v = ms.optional[col].astype(float)
        v = np.abs(v) if col == "amplitude_v" else v
        outside = np.zeros(len(ms), dtype=bool)
        for d in range(len(names)):
            fit_d = (codes == d) & ~held & pulse
            held_d = (codes == d) & held & pulse
            if not held_d.any():
                continue
            if not fit_d.any():
                outside |= held_d
            elif col == "width_s":
                outside |= held_d & ~np.isin(v, np.unique(v[fit_d]))
            else:
                outside |= held_d & ((v < v[fit_d].min()) | (v > v[fit_d].max()))
        out[col] = {
            "fitting_range": [float(v[~held & pulse].min()), float(v[~held & pulse].max())],
            "heldout_range": [float(v[held & pulse].min()), float(v[held & pulse].max())],
            "heldout_outside_fraction": float(outside[held & pulse].mean()),
        }
    ranges = device_ranges(ms)
    prev = previous_rows(codes)
    ok = pulse & ~ms.segment_starts() & (prev >= 0)
    scale = np.array([ranges[names[c]] for c in codes])
    dg = np.zeros(len(ms))
    dg[ok] = (ms.conductance[ok] - ms.conductance[prev[ok]]) / scale[ok]
    for key, rows in (("fitting", ~held), ("heldout", held)):
        for pol, name in ((1, "up"), (-1, "down")):
            sel = ok & rows & (ms.polarity == pol)
            out[f"mean_change_{name}_{key}"] = float(dg[sel].mean()) if sel.any() else float("nan")
    return out


def format_metrics(m: dict[str, Any], title: str = "") -> str:
    lines = [title] if title else []
    lines.append(
        f"  rows {m['rows']}, devices {m['devices']}, replays {m.get('replays', 1)}: normalized RMSE of the mean trajectory "
        f"{m['nrmse']:.4f} (target < {NRMSE_TARGET}) {'PASS' if m['pass_nrmse'] else 'FAIL'}"
    )
    if "nrmse_noise_floor_median" in m:
        lines.append(
            f"  noise floor (one replayed realization vs the model's expected trajectory): median "
            f"{m['nrmse_noise_floor_median']:.4f}, 95th percentile {m['nrmse_noise_floor_p95']:.4f}: the measured "
            f"trajectory is {'within' if m['nrmse_within_noise'] else 'OUTSIDE'} the model's own realization spread"
        )
    restart = m.get("restart")
    if restart and restart.get("rows"):
        off = restart["measured_minus_predicted"]
        lines.append(
            f"  restarts at {restart['rows']} held-out start(s) write {restart['rule']}; the measured read "
            f"minus the prediction (x range): {', '.join(f'{v:+.3f}' for v in off[:8])}"
            + (" ..." if len(off) > 8 else "")
        )
    if m["devices"] > 1:
        lines.append(
            f"  device-matched (replayed device i vs measured device i): rms {m['nrmse_device_matched']:.4f}, "
            f"worst device {m['nrmse_worst_device']:.4f} (information: the model draws its devices at random)"
        )
    for key in ("up", "down"):
        if f"step_std_ratio_{key}" in m:
            lines.append(
                f"  std of the per-pulse change, {key:>4}: measured {m[f'step_std_{key}_measured']:.4g}, "
                f"replayed {m[f'step_std_{key}_replayed']:.4g} (x range), ratio {m[f'step_std_ratio_{key}']:.3f} "
                f"(target 1/{STD_RATIO_TARGET}..{STD_RATIO_TARGET}), {m[f'steps_{key}']} steps"
            )
    lines.append(f"  step spread {'PASS' if m['pass_step_std'] else 'FAIL'}")
    shift = m.get("protocol_shift")
    if shift:
        lines.append("  held-out vs fitting pulses (information: the protocol the model must predict):")
        for col, unit in (("width_s", "s"), ("amplitude_v", "V (|amplitude|)")):
            if col in shift:
                c = shift[col]
                lines.append(
                    f"    {col}: fitting {c['fitting_range'][0]:.3g}..{c['fitting_range'][1]:.3g}, held out "
                    f"{c['heldout_range'][0]:.3g}..{c['heldout_range'][1]:.3g} {unit}; "
                    f"{c['heldout_outside_fraction']:.0%} of the held-out pulses outside their device's fitting "
                    f"{'widths' if col == 'width_s' else 'range'}"
                )
        lines.append(
            f"    measured mean change per pulse (x range): up {shift['mean_change_up_fitting']:+.4f} fitting, "
            f"{shift['mean_change_up_heldout']:+.4f} held out; down {shift['mean_change_down_fitting']:+.4f} fitting, "
            f"{shift['mean_change_down_heldout']:+.4f} held out"
        )
    if m.get("amplitude_groups"):
        lines.append("  per |amplitude| group (information: an identical-pulse model has one step per state):")
        for g in m["amplitude_groups"]:
            lo, hi = g["amplitude_v"]
            lines.append(
                f"    {g['polarity']:>4} {lo:g}-{hi:g} V: {g['steps']:>4} steps, mean change measured "
                f"{g['mean_measured']:+.4f} replayed {g['mean_replayed']:+.4f}; std measured {g['std_measured']:.4f} "
                f"replayed {g['std_replayed']:.4f}, ratio {g['ratio']:.2f}"
            )
    return "\n".join(lines)


def holdout_starts(ms: MeasurementSet, held: np.ndarray) -> np.ndarray:
    """First held-out row of every held-out stretch of a device (where a replay that scores
    held-out rows restarts: ``hil characterize --restart-at-holdout`` from the measured
    value, ``hil calibrate``'s check from the model's prediction of it)."""
    codes, _ = ms.device_codes()
    out = np.zeros(len(ms), dtype=bool)
    last: dict[int, bool] = {}
    for i, c in enumerate(codes):
        out[i] = bool(held[i]) and not last.get(int(c), False)
        last[int(c)] = bool(held[i])
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m hil.calibration.compare MEASURED.csv REPLAY.csv [REPLAY.csv ...]``."""
    import argparse

    from hil.calibration.measurements import load_measurements
    from hil.calibration.split import DEFAULT_HOLDOUT, holdout_rows

    ap = argparse.ArgumentParser(description="figures of merit of replayed files against the measured one")
    ap.add_argument("measured")
    ap.add_argument("replayed", nargs="+", help="one or more replays (other seeds) of the measured file")
    ap.add_argument("--holdout", type=float, default=DEFAULT_HOLDOUT, help="held-out fraction (as hil calibrate)")
    args = ap.parse_args(argv)
    ms = load_measurements(args.measured)
    reps = [load_measurements(p, min_pulses=1) for p in args.replayed]
    print(format_metrics(replay_metrics(ms, reps), "all rows:"))
    held, unit = holdout_rows(ms, args.holdout)
    ok = True
    if held.any():
        m = replay_metrics(ms, reps, held)
        print(format_metrics(m, f"held-out rows ({unit}, fraction {args.holdout:.3g}):"))
        ok = m["pass_nrmse"] and m["pass_step_std"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
