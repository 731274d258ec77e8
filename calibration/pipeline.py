"""The calibration pipeline: measurements -> fitted step models -> model selection -> DeviceModel.

Steps (each documented in docs/calibration.md):

1. map conductance to normalized weight (:mod:`hil.calibration.mapping`);
2. split rows into fitting rows and held-out later cycles (:mod:`hil.calibration.split`);
3. read noise from repeated reads (polarity 0) when the data has them (pooled
   within-block standard deviation; fixed in every fit), else a free parameter;
4. for every candidate step model: a pooled fit, then per-device fits, on the
   fitting rows; BIC and AIC from the per-device fit, and the held-out negative
   log-likelihood (each held-out read predicted from all earlier reads);
5. selection: a hard bound (``constant``, ``table``) that the reads never reach is not
   determined by them and is set at the extreme reads (:func:`bounds_at_reads`);
   candidates whose parameters the data do not determine are rejected
   (:func:`undetermined_parameters`: a relative standard error above 100 %, a value at
   a limit of the optimizer's box, or a bound of a state-dependent model more than
   one data span beyond the reads); among the others, the lowest BIC among the
   models whose held-out NLL is within ``max(2 nats, 2 standard errors of the
   difference)`` of their best held-out NLL (the standard error by batch means,
   since successive reads are correlated);
6. the chosen model is fitted again on all rows (``final_fit="all"``; if that refit
   leaves parameters undetermined that the fitting rows determined, the fit on the
   fitting rows is kept and the report says so) or kept as fitted on the fitting
   rows (``"train"``); nominal parameters are the mean over
   devices, device-to-device spread the standard deviation over devices (corrected
   for each device's estimation error) relative to the mean, kept only where a
   chi-square test says the devices differ by more than their estimation errors
   (1 % level), for the step scales and bounds (``D2D_PARAMETERS``; the shape
   exponents are shared), c2c the mean of the per-device values.  A device whose
   estimate of a parameter has a relative standard error above 50 % (a bound its
   data never approach) is left out of that parameter's mean and spread.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field

import hil
from hil.calibration.bounds import bounds_at_reads
from hil.calibration.candidates import (
    BOX_EDGE,
    auto_jobs,
    blas_single_thread,
    candidate_family,
    fit_candidates,
    fit_pair,
    initial_values,
    write_noise_undetermined,
)
from hil.calibration.filter import CHUNK, Sequences
from hil.calibration.fit import NOISE_NAMES, FitResult
from hil.calibration.mapping import Mapping, MappingSpec, choose_mapping
from hil.calibration.measurements import MeasurementSet
from hil.calibration.noise_match import NoiseMatch, match_step_spread, scale_noise
from hil.calibration.pulse_law import PulseLawFit, fit_pulse_law
from hil.calibration.split import DEFAULT_HOLDOUT, holdout_rows
from hil.calibration.spread import device_spread, pulse_width_groups
from hil.calibration.stepmodels import Family
from hil.config import HilModel
from hil.device_model import (
    STEP_PARAMETERS,
    ConstantStep,
    DeviceModel,
    DeviceVariation,
    ExpStep,
    LinearStep,
    PowStep,
    SoftBoundsStep,
    TableStep,
)
from hil.pulse_response import PulseResponse

MODEL_KINDS: tuple[str, ...] = ("constant", "linear", "softbounds", "pow", "exp", "table")
ModelChoice = Literal["auto", "constant", "linear", "softbounds", "pow", "exp", "table"]
MIN_READ_DOF = 10
# parameters whose device-to-device spread enters the model: step scales and bounds.  The shape
# exponents (gamma) are shared: per device they are strongly correlated with the bounds, and
# their spread cannot be told from estimation error (the report still lists it).
D2D_PARAMETERS = ("dw_up", "dw_down", "w_min", "w_max")
UNDETERMINED = 0.5  # relative standard error above which a device's estimate is left out
# a bound of a state-dependent step model (softbounds, linear, pow, exp) more than this many
# data spans beyond the fitting reads is an extrapolation the data do not determine
BOUND_SPANS = 1.0
# a candidate parameter whose standard error exceeds its magnitude is not told from zero by the
# data (the degenerate fits this rejects are off by factors of 10 to 1000; weak but real signals,
# e.g. the HfO2 step sizes under its large noise, sit at 50-90 %)
UNDETERMINED_MODEL = 1.0


class CalibrationConfig(HilModel):
    """Settings of one calibration run (stored in the model's provenance)."""

    model: ModelChoice = "auto"
    candidates: list[str] = Field(default_factory=lambda: list(MODEL_KINDS))
    holdout_fraction: float = Field(DEFAULT_HOLDOUT, ge=0, lt=1)
    mapping: MappingSpec = Field(default_factory=MappingSpec)
    table_nodes: int = Field(10, ge=3, le=200)
    final_fit: Literal["all", "train"] = "all"
    max_nfev: int = Field(200, ge=5)
    name: str = "calibrated"
    selection_nats: float = Field(2.0, ge=0, description="held-out NLL margin, nats")
    chunk: int = Field(
        CHUNK,
        ge=8,
        description="contiguous runs longer than this many reads are cut into chunks of about this "
        "length for the filter (each chunk starts from its first read: faster, but a chunk should be "
        "long compared to the memory of the noise)",
    )
    write_noise: Literal["auto", "off"] = Field(
        "auto",
        description="auto: every candidate is also fitted with the non-accumulating write-noise offset, "
        "kept where the data determine it and it lowers the BIC; off: never",
    )
    pulse_response: Literal["auto", "merz", "none"] = Field(
        "auto",
        description="auto: where the pulses differ in amplitude or width (amplitude_v and width_s "
        "columns), a KAI / Merz law of the pulse is fitted, with a field exponent alpha where the BIC "
        "supports it, and kept if it lowers the BIC (calibration/pulse_law.py); merz: the same with "
        "Merz's alpha = 1 only; none: every pulse is treated as the same pulse",
    )
    noise_match: Literal["steps", "none"] = Field(
        "steps",
        description="steps: scale the fitted noise terms by one factor where a free-running replay of the "
        "fitting rows is more (or less) spread per pulse than the measurement, beyond its standard error "
        "(calibration/noise_match.py); none: keep the likelihood's noise terms",
    )
    d2d_groups: Literal["pulse_width", "none"] = Field(
        "pulse_width",
        description="pulse_width: the device-to-device spread is measured within groups of devices "
        "whose pulses had the same widths (width_s), so that a difference of protocol is not read as "
        "device variation; none: around the mean of all devices",
    )


class CandidateScore(HilModel):
    """How one step model scored on the fitting and held-out rows."""

    model: str
    k: int
    n_train: int
    nll_train: float
    bic: float
    aic: float
    n_heldout: int
    nll_heldout: float | None
    heldout_margin: float | None = None
    eligible: bool = True
    pooled_nll_train: float
    converged: bool
    determined: bool = True
    undetermined: list[str] = Field(default_factory=list)
    bounds_at_reads: list[str] = Field(
        default_factory=list,
        description="hard bounds (constant, table) the fitting reads never reach, set at the extreme reads",
    )
    write_noise: bool = False
    write_noise_fit: dict[str, Any] | None = Field(
        None, description="the pooled fit with the write-noise offset: BIC gain, values, why not used"
    )


@dataclass
class Calibration:
    """Everything a calibration produced (the report is written from it)."""

    config: CalibrationConfig
    measurements: MeasurementSet
    mapping: Mapping
    weights: np.ndarray
    seq: Sequences
    heldout: np.ndarray
    heldout_unit: str
    read_noise: dict[str, Any]
    candidates: list[CandidateScore]
    chosen: str
    family: Family
    pooled: FitResult
    per_device: FitResult | None
    train_pooled: FitResult
    train_per_device: FitResult | None
    model: DeviceModel
    train_model: DeviceModel
    parameters: dict[str, dict[str, Any]]
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    replay: dict[str, Any] | None = None
    pulse_law: PulseLawFit | None = None
    noise_match: NoiseMatch | None = None


# ------------------------------------------------------------------ helpers
def read_noise_from_repeats(ms: MeasurementSet, w: np.ndarray) -> tuple[float | None, int]:
    """Pooled within-block std of reads without pulses (and the read just before them).

    Returns ``(sigma, degrees_of_freedom)``; ``sigma`` is None without repeated reads.
    """
    codes, _ = ms.device_codes()
    starts = ms.segment_starts()
    ss = 0.0
    dof = 0
    blocks: dict[int, list[float]] = {}
    last_val: dict[int, float] = {}

    def close(b: list[float]) -> None:
        nonlocal ss, dof
        if len(b) >= 2:
            a = np.asarray(b)
            ss += float(((a - a.mean()) ** 2).sum())
            dof += len(a) - 1

    for i in range(len(ms)):
        d = int(codes[i])
        if starts[i]:
            close(blocks.pop(d, []))
            last_val.pop(d, None)
        if ms.polarity[i] == 0:
            block = blocks.setdefault(d, [])
            if not block and d in last_val:
                block.append(last_val[d])
            block.append(float(w[i]))
        else:
            close(blocks.pop(d, []))
        last_val[d] = float(w[i])
    for b in blocks.values():
        close(b)
    if dof == 0:
        return None, 0
    return float(np.sqrt(ss / dof)), dof


def batch_means_se(diff: np.ndarray, batches: int = 20) -> float:
    """Standard error of ``diff.sum()`` for a correlated series (batch means over contiguous
    runs of reads, in filter order: the per-read differences of two models are correlated
    along a device's history, so the i.i.d. formula would understate it)."""
    n = len(diff)
    if n < 2:
        return 0.0
    b = max(2, min(batches, n // 4 if n >= 8 else n))
    sums = np.array([part.sum() for part in np.array_split(diff, b)])
    return float(np.std(sums, ddof=1) * np.sqrt(b))


def _summarize(
    fam: Family,
    pooled: FitResult,
    per: FitResult | None,
    device_mask: np.ndarray,
    groups: np.ndarray | None = None,
) -> tuple[dict[str, float], dict[str, float], dict[str, dict[str, Any]]]:
    """Nominal values, d2d and a parameter table from pooled and per-device fits.

    ``groups`` (one label per device of the sequences, or None): the d2d spread is measured
    within groups of devices pulsed alike (:func:`hil.calibration.spread.pulse_width_groups`)."""
    nominal: dict[str, float] = {}
    d2d: dict[str, float] = {}
    table: dict[str, dict[str, Any]] = {}
    names = list(fam.names) + ["c2c", "read_sd"]
    last = per if per is not None else pooled
    if last.write_noise:
        names += ["write_sd", "write_rho"]
    for name in names:
        if name in ("read_sd", "write_sd", "write_rho") and per is not None and name in per.slot_names:
            # a noise parameter shared by all devices and fitted with the per-device parameters
            src = per
        else:
            src = pooled
        pv = float(src.values[name][0])
        pse = float(src.se.get(name, np.array([np.nan]))[0])
        row: dict[str, Any] = {"pooled": pv, "pooled_se": pse}
        if per is not None and (name in fam.shape_names() or name == "c2c"):
            all_vals = per.values[name][device_mask]
            all_ses = per.se.get(name, np.full(len(device_mask), np.nan))[device_mask]
            row.update(per_device=all_vals.tolist(), per_device_se=all_ses.tolist())
            # devices whose estimate is undetermined (relative standard error above
            # UNDETERMINED, e.g. a bound a short run never approaches) carry no information
            # about this parameter: they are left out of its mean and spread
            rel = np.abs(all_ses) / np.maximum(np.abs(all_vals), 1e-300)
            use = np.isfinite(all_ses) & (rel < UNDETERMINED) if name != "c2c" else np.ones(len(all_vals), bool)
            if not use.any():
                use = np.ones(len(all_vals), dtype=bool)
            vals, ses = all_vals[use], all_ses[use]
            mean = float(vals.mean())
            row.update(per_device_mean=mean, devices_used=int(use.sum()))
            nominal[name] = mean
            # is the spread larger than the devices' estimation errors explain? (chi-square, 1 %;
            # within groups of devices pulsed with the same widths: calibration/spread.py)
            sp = None
            if name != "c2c":
                sp = device_spread(vals, ses, None if groups is None else groups[device_mask][use])
            if sp is not None:
                spread = sp["estimate"] if sp["significant"] and name in D2D_PARAMETERS else 0.0
                row["d2d"] = spread
                row["d2d_estimate"] = sp["estimate"]
                row["d2d_chi2"] = sp["chi2"]
                row["d2d_chi2_critical"] = sp["critical"]
                row["d2d_dof"] = sp["dof"]
                row["d2d_raw"] = sp["raw"]
                if groups is not None:
                    row["d2d_groups"] = sp["groups_used"]
                if spread > 0 and np.isfinite(spread):
                    d2d[name] = spread
            # estimation error of the mean of these devices' values, and the sampling error of the
            # population mean (which a finite set of devices leaves)
            row["se"] = float(np.sqrt(np.sum(ses**2)) / len(vals))
            row["se_population"] = float(np.std(vals, ddof=1) / np.sqrt(len(vals))) if len(vals) >= 2 else float("nan")
        elif per is not None and name not in NOISE_NAMES:
            # shared by all devices (a table's nodes): the value of the per-device fit
            nominal[name] = float(per.values[name][device_mask][0])
            se_shared = per.se.get(name)
            row["se"] = float(se_shared[0]) if se_shared is not None else pse
            row["pooled_se"] = row["se"]
        else:
            nominal[name] = pv
            row["se"] = pse
        row["value"] = nominal[name]
        row["relative_se"] = abs(row["se"]) / abs(row["value"]) if row["value"] else float("inf")
        table[name] = row
    return nominal, d2d, table


def undetermined_parameters(
    fam: Family,
    table: dict[str, dict[str, Any]],
    data_range: tuple[float, float],
    free: set[str] | None = None,
) -> list[str]:
    """Why a fitted candidate is not determined by the data (empty: it is).

    ``table`` is :func:`_summarize`'s parameter table (the values that go into the device
    model, with their standard errors); ``free`` the parameters that were fitted (others,
    e.g. the scales of a single-device table, are fixed and skipped).  Checked parameters: every step parameter of
    ``softbounds``, ``linear``, ``pow`` and ``exp`` (their bounds shape the step, so the
    step's dependence on the state can determine them where the reads do not reach them,
    and must); the step scales of ``constant`` and ``table`` (their bounds are hard clamps:
    determined only where the reads reach them, and set at the extreme reads where they do
    not, by :func:`bounds_at_reads` before this check; a table's nodes sit on the visited
    states).  Rules:

    - relative standard error above ``UNDETERMINED_MODEL`` (100 %: the data do not tell the
      value from zero; an exponent's error is compared with ``max(|gamma|, 1)``), or not finite;
    - at a limit of the optimizer's search box (within ``BOX_EDGE`` of the limit's magnitude;
      the lower limit 0 of a ``pow``/``linear`` exponent is a legitimate value);
    - a bound of a state-dependent model more than ``BOUND_SPANS`` data spans beyond the
      fitting reads (0.5th to 99.5th percentile): an extrapolation, not a measurement.
    """
    kind = fam.kind
    names = ("dw_up", "dw_down") if kind in ("constant", "table") else tuple(fam.names)
    lo_d, hi_d = data_range
    span = max(hi_d - lo_d, 1e-12)
    out: list[str] = []
    for name in names:
        row = table.get(name)
        if row is None or (free is not None and name not in free):
            continue
        v = float(row["value"])
        se = row.get("se")
        # exponents are compared with max(|gamma|, 1): gamma 0 is a legitimate value (pow/linear/exp
        # reduce to a simpler model there) whose relative error would be infinite
        ref = max(abs(v), 1.0) if name.startswith("gamma") else abs(v)
        rel = abs(float(se)) / ref if se is not None and ref != 0 else float("inf")
        if not np.isfinite(rel) or rel > UNDETERMINED_MODEL:
            out.append(f"{name} = {v:.4g} with standard error {float(se) if se is not None else float('nan'):.3g} "
                       f"({'not finite' if not np.isfinite(rel) else f'{rel:.0%} of ' + ('max(|value|, 1)' if name.startswith('gamma') else 'the value')})")
            continue
        b_lo, b_hi = fam.bounds(name)
        natural_zero = name.startswith("gamma") and kind in ("pow", "linear") and b_lo == 0.0
        at_hi = v >= b_hi - BOX_EDGE * max(abs(b_hi), 1e-9)
        at_lo = v <= b_lo + BOX_EDGE * max(abs(b_lo), 1e-9) and not natural_zero
        if at_hi or at_lo:
            out.append(f"{name} = {v:.4g} at the limit of the search box [{b_lo:g}, {b_hi:g}]")
            continue
        if name == "w_min" and v < lo_d - BOUND_SPANS * span:
            out.append(f"w_min = {v:.4g}, more than {BOUND_SPANS:g} data span(s) below the lowest reads ({lo_d:.3g})")
        elif name == "w_max" and v > hi_d + BOUND_SPANS * span:
            out.append(f"w_max = {v:.4g}, more than {BOUND_SPANS:g} data span(s) above the highest reads ({hi_d:.3g})")
    return out


def build_device_model(
    fam: Family,
    nominal: dict[str, float],
    d2d: dict[str, float],
    mapping: Mapping,
    name: str,
    description: str,
    pulse_response: PulseResponse | None = None,
) -> DeviceModel:
    kind = fam.kind
    c2c = float(nominal["c2c"])
    read_noise = float(nominal["read_sd"])
    step: Any
    if kind == "table":
        assert fam.grid is not None
        k = range(fam.n_nodes)
        step = TableStep(
            w_min=float(nominal["w_min"]),
            w_max=float(nominal["w_max"]),
            dw_up=float(nominal["dw_up"]),
            dw_down=float(nominal["dw_down"]),
            grid=[float(g) for g in fam.grid],
            up_mean=[float(nominal[f"up_node_{i}"]) for i in k],
            down_mean=[float(nominal[f"down_node_{i}"]) for i in k],
            up_std=[abs(float(nominal[f"up_std_{i}"])) for i in k],
            down_std=[abs(float(nominal[f"down_std_{i}"])) for i in k],
        )
        c2c = 0.0
    else:
        cls = {
            "constant": ConstantStep,
            "linear": LinearStep,
            "softbounds": SoftBoundsStep,
            "pow": PowStep,
            "exp": ExpStep,
        }[kind]
        step = cls(**{k: float(nominal[k]) for k in STEP_PARAMETERS[kind]})
    allowed = set(STEP_PARAMETERS[kind])
    return DeviceModel(
        name=name,
        description=description,
        source="hil calibrate",
        step=step,
        variation=DeviceVariation(
            c2c=c2c,
            d2d={k: float(v) for k, v in d2d.items() if k in allowed},
            write_noise=float(nominal.get("write_sd", 0.0)),
            write_noise_rho=float(nominal.get("write_rho", 0.0)) if nominal.get("write_sd", 0.0) > 0 else 0.0,
        ),
        read_noise=read_noise,
        conductance=mapping.model,
        pulse_response=pulse_response,
    )


def model_summary(model: DeviceModel) -> dict[str, float]:
    """Symmetry point, step there (dw_min) and number of states of the nominal device."""
    import torch

    from hil.simulated.devices import DeviceArray

    nominal = model.model_copy(
        update={"variation": model.variation.model_copy(update={"d2d": {}, "stuck_fraction": 0.0})}
    )
    arr = DeviceArray(nominal, 1, 1, torch.Generator().manual_seed(0), torch.device("cpu"), torch.float64)
    return {
        "symmetry_point": float(arr.symmetry_point().item()),
        "dw_min": float(arr.step_at_symmetry().item()),
        "n_states": float(arr.n_states().item()),
    }


# ------------------------------------------------------------------ pipeline
def jsonable(v: Any) -> Any:
    """Plain JSON data (lists, finite floats or None) that survives a file round trip unchanged."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if np.isfinite(f) else None
    return v


def calibrate(
    ms: MeasurementSet, config: CalibrationConfig | None = None, fmt: str = "schema", jobs: int = 1
) -> Calibration:
    """Fit, select and build the device model for a checked measurement set.

    ``jobs``: worker processes for the candidate step models' fits (1: all in this process;
    0: :func:`auto_jobs`); the result is the same with any number (:func:`fit_candidates`).
    Workers start from a fork server, so a script that passes ``jobs != 1`` needs the usual
    ``if __name__ == "__main__":`` guard."""
    if jobs < 0:
        raise ValueError(f"jobs must be >= 0 (0: auto), got {jobs}")
    with blas_single_thread():
        return _calibrate(ms, config, fmt, jobs or auto_jobs(len(ms)))


def _calibrate(ms: MeasurementSet, config: CalibrationConfig | None, fmt: str, jobs: int = 1) -> Calibration:
    cfg = config or CalibrationConfig()
    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    mapping = choose_mapping(ms, cfg.mapping)
    w = mapping.to_weight(ms.conductance, ms.device)
    seq = Sequences.build(ms, w, chunk=cfg.chunk)
    heldout, unit = holdout_rows(ms, cfg.holdout_fraction)
    train_rows = ~heldout
    train = seq.mask(train_rows)
    held = seq.mask(heldout)
    all_rows = seq.mask(np.ones(len(ms), dtype=bool))
    if not train.any():
        raise ValueError(f"{ms.source}: no pulse rows to fit after the first read of each device")
    by_width = cfg.d2d_groups == "pulse_width"
    groups_train = pulse_width_groups(ms, train_rows, seq.devices) if by_width else None
    groups_all = pulse_width_groups(ms, np.ones(len(ms), dtype=bool), seq.devices) if by_width else None
    sigma_rep, dof = read_noise_from_repeats(ms, w)
    read_fixed = sigma_rep if (sigma_rep is not None and dof >= MIN_READ_DOF) else None
    read_info: dict[str, Any] = {
        "method": (
            f"repeated reads (polarity 0): pooled within-block std, {dof} degrees of freedom"
            if read_fixed is not None
            else (
                "fitted: the filter separates read noise (anti-correlated successive steps) from "
                "write noise"
                + (f" (only {dof} degrees of freedom of repeated reads, < {MIN_READ_DOF})" if dof else "")
            )
        ),
        "repeated_reads_dof": dof,
        "repeated_reads_sd": sigma_rep,
    }
    timing["prepare"] = time.perf_counter() - t0
    # ---- the pulse law (pulses of different amplitude / width), fitted once, held for every candidate
    law: PulseLawFit | None = None
    if cfg.pulse_response != "none":
        t1 = time.perf_counter()
        sb = candidate_family("softbounds", seq, train, cfg.table_nodes)
        law = fit_pulse_law(ms, seq, train, train_rows, initial_values(sb, seq, train, read_fixed), read_fixed,
                            field_exponent=cfg.pulse_response == "auto")
        if law is not None and law.used:
            seq.scale = law.scale
        timing["pulse_law"] = time.perf_counter() - t1
    k_law = law.k_law if law is not None and law.used else 0
    response = law.response if law is not None and law.used else None
    kinds = list(cfg.candidates) if cfg.model == "auto" else [cfg.model]
    for k in kinds:
        if k not in MODEL_KINDS:
            raise ValueError(f"unknown step model {k!r}; known: {', '.join(MODEL_KINDS)}")
    fams: dict[str, Family] = {}
    pooled_fits: dict[str, FitResult] = {}
    per_fits: dict[str, FitResult | None] = {}
    scores: dict[str, CandidateScore] = {}
    held_nll: dict[str, np.ndarray] = {}
    order = [k for k in ("constant", "softbounds", "linear", "pow", "exp", "table") if k in kinds]
    y_train = seq.y[train]
    data_range = (float(np.percentile(y_train, 0.5)), float(np.percentile(y_train, 99.5)))
    fitted = fit_candidates(order, seq, train, held, read_fixed, cfg, jobs)
    for kind in order:
        c = fitted[kind]
        fam, pooled, per, winfo, bound_lines = c.fam, c.pooled, c.per, c.write_info, c.bound_lines
        fams[kind], pooled_fits[kind], per_fits[kind] = fam, pooled, per
        best = per if per is not None else pooled
        table = kind == "table"
        pooled_names = {n for n in fam.names if not (table and n in ("dw_up", "dw_down"))}
        pooled_names |= (set() if table else {"c2c"}) | ({"read_sd"} if read_fixed is None else set())
        # parameters fitted in the pooled fit only (held there in the per-device fit) count too
        k_total = best.k + (len(pooled_names - set(best.slot_names)) if per is not None else 0) + k_law
        n_train = best.n_scored
        nll_h = c.nll_heldout
        held_nll[kind] = nll_h
        scores[kind] = CandidateScore(
            model=kind,
            k=k_total,
            n_train=n_train,
            nll_train=best.nll,
            bic=2 * best.nll + k_total * float(np.log(n_train)),
            aic=2 * best.nll + 2 * k_total,
            n_heldout=int(len(nll_h)),
            nll_heldout=float(nll_h.sum()) if len(nll_h) else None,
            pooled_nll_train=pooled.nll,
            converged=bool(pooled.success and (per is None or per.success)),
            write_noise=best.write_noise,
            write_noise_fit=jsonable(winfo) if winfo.get("tried") else None,
            bounds_at_reads=bound_lines,
        )
        _, _, cand_table = _summarize(fam, pooled, per, seq.device_rows(train), groups_train)
        free = set(pooled.se) | (set(per.se) if per is not None else set())
        why = undetermined_parameters(fam, cand_table, data_range, free)
        scores[kind].determined = not why
        scores[kind].undetermined = why
        timing[f"fit_{kind}"] = c.seconds
    # ---- selection: candidates the data do not determine are rejected first
    selection_notes: list[str] = []
    usable = [k for k in order if scores[k].determined]
    for k in order:
        if not scores[k].determined:
            what = "rejected" if cfg.model == "auto" and len(order) > 1 else "WARNING: the requested model"
            selection_notes.append(
                f"{what} {k}: parameters not determined by the data: " + "; ".join(scores[k].undetermined)
            )
    if not usable:
        usable = list(order)
        if len(order) > 1:
            selection_notes.append(
                "no candidate has all its parameters determined by the data: selected among all of them; "
                "the protocol should drive the devices across their range (both directions)"
            )
    if len(usable) > 1 and any(len(held_nll[k]) for k in usable):
        best_h = min(usable, key=lambda k: held_nll[k].sum())
        for k in order:
            diff = held_nll[k] - held_nll[best_h]
            se = batch_means_se(diff)
            margin = max(cfg.selection_nats, 2.0 * se)
            s = scores[k]
            s.heldout_margin = margin
            s.eligible = bool(diff.sum() <= margin)
        chosen = min((k for k in usable if scores[k].eligible), key=lambda k: scores[k].bic)
    else:
        chosen = min(usable, key=lambda k: scores[k].bic)
    fam = fams[chosen]
    device_mask = seq.device_rows(train)
    # ---- models on the fitting rows and on all rows
    train_pooled, train_per = pooled_fits[chosen], per_fits[chosen]
    nominal_t, d2d_t, _ = _summarize(fam, train_pooled, train_per, device_mask, groups_train)
    description = f"{chosen} step model fitted to {ms.source}"
    train_model = build_device_model(fam, nominal_t, d2d_t, mapping, cfg.name, description + " (fitting rows)",
                                     response)
    t2 = time.perf_counter()
    refit_kept = True
    chosen_bounds = list(scores[chosen].bounds_at_reads)
    groups = groups_train
    if cfg.final_fit == "all" and held.any():
        start = {k: v[0] for k, v in train_pooled.values.items()}
        train_last = train_per if train_per is not None else train_pooled
        if train_last.write_noise:
            start.update({k: float(train_last.values[k][0]) for k in ("read_sd", "write_sd", "write_rho")})
        final_pooled, final_per, _ = fit_pair(
            fam, seq, all_rows, [start], read_fixed, cfg.max_nfev, "on" if train_last.write_noise else "off"
        )
        final_pooled, final_bounds = bounds_at_reads(fam, seq, all_rows, final_pooled)
        if final_per is not None:
            final_per, final_bounds = bounds_at_reads(fam, seq, all_rows, final_per)
        all_mask = seq.device_rows(all_rows)
        _, _, refit_table = _summarize(fam, final_pooled, final_per, all_mask, groups_all)
        free = set(final_pooled.se) | (set(final_per.se) if final_per is not None else set())
        y_all = seq.y[all_rows]
        why = undetermined_parameters(
            fam, refit_table, (float(np.percentile(y_all, 0.5)), float(np.percentile(y_all, 99.5))), free
        )
        final_last = final_per if final_per is not None else final_pooled
        if final_last.write_noise:
            why += write_noise_undetermined(final_last, int(seq.valid.sum(axis=1).max()))
        if why and scores[chosen].determined:
            # the refit on all rows lost what the fitting rows determined: keep the fit on the fitting rows
            selection_notes.append(
                f"the refit of {chosen} on all rows left parameters undetermined ({'; '.join(why)}): "
                "the model fitted on the fitting rows is kept"
            )
            final_pooled, final_per = train_pooled, train_per
            refit_kept = False
        else:
            device_mask = all_mask
            groups = groups_all
            chosen_bounds = final_bounds
    else:
        final_pooled, final_per = train_pooled, train_per
        refit_kept = cfg.final_fit == "all"
    timing["final_fit"] = time.perf_counter() - t2
    nominal, d2d, table = _summarize(fam, final_pooled, final_per, device_mask, groups)
    model = build_device_model(fam, nominal, d2d, mapping, cfg.name, description, response)
    noise: NoiseMatch | None = None
    if cfg.noise_match == "steps":
        t3 = time.perf_counter()
        noise = match_step_spread(train_model, ms.subset(train_rows), mapping, scale_read=read_fixed is None)
        if noise.applied:
            # the factor measured on the fitting rows holds for the refit on all rows too: it is
            # the ratio of the noise the filter needs to the noise a free-running replay needs
            train_model = scale_noise(train_model, noise.kappa, read=read_fixed is None)
            model = scale_noise(model, noise.kappa, read=read_fixed is None)
        timing["noise_match"] = time.perf_counter() - t3
    summary = model_summary(model)
    scale = float(mapping.scale()[0])
    notes = list(ms.notes) + selection_notes
    if chosen_bounds:
        notes.append(
            f"{chosen}: a hard bound that the reads never reach is not determined by them; it is set at the "
            "extreme reads, so the simulated device stays within the measured range: " + "; ".join(chosen_bounds)
        )
    if law is not None:
        notes.append(_law_note(law))
    if noise is not None and noise.applied:
        notes.append(
            f"noise terms scaled by {noise.kappa:.3f} (likelihood on the fitting rows: c2c {noise.likelihood['c2c']:.3g}, read noise "
            f"{noise.likelihood['read_noise']:.3g}): with the likelihood's noise a free-running replay of the "
            f"fitting rows spreads the per-pulse change {np.sqrt(noise.replayed_var_likelihood / noise.measured_var):.2f}"
            "x as much as measured -- the filter reads what the mean model misses as noise "
            "(--noise-match none keeps the likelihood's values)"
        )
    if unit == "pulses":
        notes.append(
            "every device has a single cycle: the held-out rows are the last "
            f"{cfg.holdout_fraction:.0%} of each pulse run, not later cycles (a weaker test)"
        )
    if unit == "none":
        notes.append("no held-out rows (holdout fraction 0): selection by BIC only")
    if final_per is None and len(ms.devices) > 1:
        notes.append("device-to-device spread not estimated (fewer than two devices with pulses)")
    if final_per is not None and device_mask.sum() < 3:
        notes.append("device-to-device spread not estimated (fewer than three devices)")
    if len(ms.devices) == 1:
        notes.append("one device: no device-to-device spread can be measured (d2d left at 0)")
    if groups is not None and final_per is not None:
        g = groups[device_mask]
        sizes = np.bincount(g)
        sets = int((sizes > 0).sum())
        shared = int((sizes >= 2).sum())
        alone = int((sizes == 1).sum())
        notes.append(
            f"the devices were pulsed with {sets} different sets of pulse widths: the device-to-device "
            f"spread is measured within the {shared} group(s) of devices that share theirs"
            + (f" ({alone} device(s) alone in their group carry no information on it)" if alone else "")
            + "; across widths the steps differ by the protocol, not by the device"
            + ("" if shared else " -- no two devices share their widths, so no spread is estimated (d2d 0)")
        )
    provenance: dict[str, Any] = {
        "tool": "hil calibrate",
        "hil_version": hil.__version__,
        "fit_date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": ms.inputs,
        "format": fmt,
        "chosen_model": chosen,
        "selection": (
            "auto: lowest BIC among the determined models within the held-out margin"
            if cfg.model == "auto"
            else "given"
        ),
        "score": {
            "bic": scores[chosen].bic,
            "aic": scores[chosen].aic,
            "nll_heldout": scores[chosen].nll_heldout,
            "n_heldout": scores[chosen].n_heldout,
            "heldout_unit": unit,
        },
        "candidates": [s.model_dump() for s in scores.values()],
        "fitted_on": "all rows" if refit_kept or not held.any() else "fitting rows only",
        "mapping": mapping.provenance(),
        "read_noise": read_info,
        "devices": len(ms.devices),
        "rows": len(ms),
        "exclusions": [e.as_dict() for e in ms.exclusions],
        "summary": summary,
        "summary_siemens": {
            "dw_min_s": summary["dw_min"] * scale,
            "symmetry_point_s": float(mapping.to_conductance(np.array([summary["symmetry_point"]]))[0]),
        },
        "parameters": {k: {kk: vv for kk, vv in v.items() if kk in ("value", "se", "d2d", "pooled")} for k, v in table.items()},
        "per_device": (
            {
                d: {k: float(final_per.values[k][i]) for k in (*fam.shape_names(), "c2c")}
                for i, d in enumerate(seq.devices)
                if device_mask[i]
            }
            if final_per is not None
            else {}
        ),
        "config": cfg.model_dump(mode="json"),
        "pulse_law": law.as_dict() if law is not None else None,
        "noise_match": noise.as_dict() if noise is not None else None,
        "notes": notes,
    }
    provenance = jsonable(provenance)
    model = model.model_copy(update={"provenance": provenance})
    train_model = train_model.model_copy(update={"provenance": {**provenance, "fitted_on": "fitting rows only"}})
    timing["total"] = time.perf_counter() - t0
    return Calibration(
        config=cfg,
        measurements=ms,
        mapping=mapping,
        weights=w,
        seq=seq,
        heldout=heldout,
        heldout_unit=unit,
        read_noise=read_info,
        candidates=list(scores.values()),
        chosen=chosen,
        family=fam,
        pooled=final_pooled,
        per_device=final_per,
        train_pooled=train_pooled,
        train_per_device=train_per,
        model=model,
        train_model=train_model,
        parameters=table,
        seconds=timing,
        notes=notes,
        pulse_law=law,
        noise_match=noise,
    )


def _law_note(law: PulseLawFit) -> str:
    r = law.response
    nom = (f"nominal pulses: up {r.nominal_up.amplitude_v:g} V x {r.nominal_up.width_s:g} s, "
           f"down {r.nominal_down.amplitude_v:g} V x {r.nominal_down.width_s:g} s")
    if law.used:
        return (f"pulse response: the steps scale with each pulse's amplitude and width by a KAI / Merz law "
                f"(BIC {law.bic_change:+.1f} over identical pulses in a pooled softbounds fit); the step "
                f"parameters hold for the {nom}; the simulator applies the law where pulses carry a shape "
                "(hil characterize --replay of a file with amplitude_v / width_s)")
    return (f"pulse response: a KAI / Merz law of the pulse shape was fitted but not kept (BIC "
            f"{law.bic_change:+.1f}): every pulse is treated as the nominal one ({nom})")
