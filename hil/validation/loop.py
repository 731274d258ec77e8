"""The closed loop ``hil loop``: characterize a chip, calibrate, simulate, characterize the simulator, validate.

:func:`run_loop` on a backend (a chip, the chip emulator, a bench, a simulator):

1. **characterize** the backend with a :class:`~hil.characterization.protocol.PulseProtocol`
   (``hil characterize``'s runner: rows written as measured) -> ``chip.csv``; the
   backend's normalized reads are converted to siemens with the readout range
   ``g_range_s`` (the board's conductance scale: ``w_min -> g_min``, ``w_max -> g_max``);
2. **calibrate** ``chip.csv`` (``hil calibrate``'s pipeline) -> ``device.json``, with
   the readout range as the conductance mapping, so that the fitted model's weights
   are the backend's own weights (``calibration={"mapping": ...}`` overrides it);
3. **build the simulator**: a :class:`~hil.simulated.SimulatedCrossbar` of the fitted
   model with an ideal periphery plus the fitted read noise (the model alone: the
   chip's readout is in the fitted read noise), started at the conductance the
   chip started at (median of its first reads);
4. **characterize the simulator** with the same protocol -> ``simulated.csv``
   (conductance through the fitted model's own mapping);
5. **validate** ``simulated.csv`` against ``chip.csv`` (:func:`compare_measurements`)
   -> ``report/``; the verdict is the loop's result.

Optional: a **control** (``control="constant"``): a deliberately wrong model, a
constant-step device with the fitted model's step at its symmetry point, bounds,
noise and variation, characterized and validated the same way; it must fail.
And ``mvm=True``: :func:`hil.validation.mvm.validate_mvm` between the backend and
the fitted simulator of step 4, both in the state the protocol left them in (the
write-verify's precision depends on the state it starts from).

Nothing of the backend's own device model is used: only what the contract
returns (``read``, ``info``) and the readout range.  A backend with an ``arm()``
method (the serial and bench drivers) is armed before the first pulse.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from hil.backend import CrossbarBackend
from hil.characterization.protocol import PulseProtocol
from hil.config import HilModel, VersionedFile
from hil.device_model import ConductanceMapping, ConstantStep, DeviceModel
from hil.validation.report import ValidationReport
from hil.validation.thresholds import ValidationThresholds


def default_loop_protocol() -> PulseProtocol:
    """10 cycles of 5 repeated reads, 100 up and 100 down pulses, on every device of the window."""
    return PulseProtocol(name="loop", n_up=100, n_down=100, cycles=10, repeated_reads=5)


class LoopConfig(HilModel):
    """Settings of :func:`run_loop` (stored in the loop's JSON result)."""

    rows: int = Field(8, gt=0, description="rows of the window characterized (and of the simulator)")
    cols: int = Field(8, gt=0, description="columns of the window")
    protocol: PulseProtocol = Field(default_factory=default_loop_protocol)
    g_range_s: tuple[float, float] = Field(
        (1e-6, 1e-5), description="readout range of the backend: conductance at w_min and at w_max (siemens)"
    )
    calibration: dict[str, Any] = Field(
        default_factory=dict, description="CalibrationConfig fields (default: model selection 'auto')"
    )
    sim_seed: int = Field(1, description="seed of the simulator built from the fitted model")
    seed: int = Field(0, description="seed of the validation's resampling")
    thresholds: ValidationThresholds = Field(default_factory=ValidationThresholds)
    control: Literal["none", "constant"] = "none"
    mvm: bool = False
    progress: bool = True
    jobs: int = Field(
        0, ge=0, description="worker processes for the calibration's candidate fits (0: one per CPU core for "
        "files of at least 2000 reads; 1: none); the fitted model is the same with any number"
    )


class ControlResult(HilModel):
    """The deliberately wrong model and how validation judged it."""

    model: str
    passed: bool
    verdict: Literal["pass", "fail", "insufficient", ""] = Field("", description="the control's verdict")
    failed: list[str]
    n_evaluated: int
    csv: str


class LoopResult(VersionedFile):
    """What :func:`run_loop` did and found (``hil loop --json``)."""

    SCHEMA_VERSION = "1.0"
    backend: str
    passed: bool = Field(description="the fitted simulator passed validation against the backend")
    chosen_model: str
    device_model: str = Field(description="path of the fitted DeviceModel JSON")
    chip_csv: str
    simulated_csv: str
    report_dir: str
    validation: ValidationReport
    control: ControlResult | None = None
    mvm: dict[str, Any] | None = None
    seconds: dict[str, float] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)


def _mapping(g_range: tuple[float, float], w_min: float, w_max: float) -> Any:
    from hil.calibration.mapping import Mapping

    return Mapping(
        model=ConductanceMapping(g_min_s=g_range[0], g_max_s=g_range[1], w_min=w_min, w_max=w_max),
        rule=f"readout range {g_range[0]:.4g}..{g_range[1]:.4g} S",
    )


def fitted_simulator(model: DeviceModel, rows: int, cols: int, seed: int, start_weight: float | None) -> Any:
    """The simulator of a fitted model: ideal periphery plus the model's read noise."""
    from hil.simulated import PeripheryConfig, SimulatedCrossbar

    periphery = PeripheryConfig.ideal().model_copy(update={"w_noise": float(model.read_noise)})
    return SimulatedCrossbar(rows, cols, device=model, periphery=periphery, seed=seed,
                             initial_weight=start_weight if start_weight is not None else 0.0)


def constant_control(model: DeviceModel) -> DeviceModel:
    """A deliberately wrong model: constant steps equal to the fitted step at the symmetry point."""
    from hil.simulated.devices import nominal_dw

    dw = float(nominal_dw(model))
    keep = {k: v for k, v in model.variation.d2d.items() if k in ("dw_up", "dw_down", "w_min", "w_max")}
    return model.model_copy(update={
        "name": "control-constant",
        "description": "deliberately wrong control: constant step of the fitted step at the symmetry point",
        "step": ConstantStep(dw_up=dw, dw_down=dw, w_min=model.step.w_min, w_max=model.step.w_max),
        "variation": model.variation.model_copy(update={"d2d": keep}),
    })


def _characterize(backend: CrossbarBackend, protocol: Any, mapping: Any, out: Path, spec: str, progress: bool) -> None:
    from hil.characterization.runner import run_protocol

    meta = run_protocol(backend, protocol, mapping, out, backend_spec=spec, progress=progress)
    if not meta.complete:
        raise RuntimeError(f"characterization of {spec} wrote {meta.rows_written} of {meta.rows_expected} rows")


def _start_weight(chip_csv: Path, model: DeviceModel) -> float:
    """The fitted model's weight at the median conductance of the chip's first reads."""
    from hil.calibration.mapping import Mapping
    from hil.calibration.measurements import load_measurements

    ms = load_measurements(chip_csv)
    first = np.r_[True, ms.device[1:] != ms.device[:-1]]
    g0 = float(np.median(ms.conductance[first]))
    mapping = Mapping.from_model(model.conductance, model.provenance) if model.conductance else None
    if mapping is None:
        return 0.0
    w = float(mapping.to_weight(np.array([g0]))[0])
    return float(np.clip(w, model.step.w_min, model.step.w_max))


def _simulate(model: DeviceModel, cfg: LoopConfig, out_csv: Path, start_w: float, label: str) -> Any:
    """Characterize the simulator of ``model`` with the loop's protocol (siemens via its mapping).

    Returns the simulator, left in the state the protocol leaves it in (the chip's state
    after the same protocol, in distribution)."""
    from hil.calibration.mapping import Mapping

    if model.conductance is None:
        raise ValueError(f"{label} device model has no conductance mapping: cannot write siemens")
    sim = fitted_simulator(model, cfg.rows, cfg.cols, cfg.sim_seed, start_w)
    mapping = Mapping.from_model(model.conductance, model.provenance)
    _characterize(sim, cfg.protocol, mapping, out_csv, f"sim:{label}", cfg.progress)
    return sim


def run_loop(
    backend: CrossbarBackend | str,
    out_dir: str | os.PathLike[str],
    config: LoopConfig | None = None,
    log: Any = print,
) -> LoopResult:
    """Run the closed loop of the module docstring on ``backend`` (an open backend or a spec string)."""
    from hil.backends import open_backend
    from hil.calibration.measurements import load_measurements as load_set
    from hil.calibration.pipeline import CalibrationConfig, calibrate
    from hil.validation.compare import compare_measurements
    from hil.validation.measurements import load_measurements
    from hil.validation.report import write_report

    cfg = config or LoopConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = backend if isinstance(backend, str) else f"<{type(backend).__name__}>"
    chip = open_backend(backend, rows=cfg.rows, cols=cfg.cols) if isinstance(backend, str) else backend
    times: dict[str, float] = {}
    try:
        if chip.shape != (cfg.rows, cfg.cols):
            raise ValueError(f"backend {spec} is {chip.rows}x{chip.cols}, the loop asks for {cfg.rows}x{cfg.cols}")
        info = chip.info
        arm = getattr(chip, "arm", None)
        if callable(arm):  # real backends refuse pulses until armed: the loop is about to pulse
            arm()
        t = time.perf_counter()
        chip_csv = out / "chip.csv"
        log(f"[1/5] characterize {spec}: {cfg.protocol.cycles} cycles x ({cfg.protocol.repeated_reads} reads, "
            f"{cfg.protocol.n_up} up, {cfg.protocol.n_down} down) on {cfg.rows}x{cfg.cols} devices -> {chip_csv}")
        _characterize(chip, cfg.protocol, _mapping(cfg.g_range_s, info.w_min, info.w_max), chip_csv, spec,
                      cfg.progress)
        times["characterize_backend"] = time.perf_counter() - t
        t = time.perf_counter()
        log("[2/5] calibrate")
        # calibrate in the backend's own weight units (its readout range as the mapping), so that
        # the simulator's weights are the backend's weights (MVM and training compare like with like)
        readout = _mapping(cfg.g_range_s, info.w_min, info.w_max)
        g_at = readout.to_conductance(np.array([-1.0, 1.0]))
        cal_fields = {"mapping": {"g_range": (float(g_at[0]), float(g_at[1]))}, **cfg.calibration}
        cal = calibrate(load_set(chip_csv), CalibrationConfig(**cal_fields), jobs=cfg.jobs)
        model = cal.model
        model_path = out / "device.json"
        model.save(model_path)
        times["calibrate"] = time.perf_counter() - t
        log(f"      chosen model: {cal.chosen} -> {model_path}")
        start_w = _start_weight(chip_csv, model)
        t = time.perf_counter()
        log(f"[3/5] build the simulator (seed {cfg.sim_seed}, start weight {start_w:.3f})")
        log("[4/5] characterize the simulator with the same protocol")
        sim_csv = out / "simulated.csv"
        sim = _simulate(model, cfg, sim_csv, start_w, "device.json")
        times["characterize_simulator"] = time.perf_counter() - t
        t = time.perf_counter()
        log("[5/5] validate the simulator against the backend")
        comp = compare_measurements(load_measurements(chip_csv), load_measurements(sim_csv), cfg.thresholds, cfg.seed)
        report_dir = out / "report"
        write_report(comp, report_dir)
        times["validate"] = time.perf_counter() - t
        control = None
        if cfg.control == "constant":
            t = time.perf_counter()
            wrong = constant_control(model)
            wrong.save(out / "control.json")
            ctl_csv = out / "control.csv"
            log("[control] characterize and validate a constant-step model (must fail)")
            _simulate(wrong, cfg, ctl_csv, start_w, "control.json")
            rep = compare_measurements(load_measurements(chip_csv), load_measurements(ctl_csv),
                                       cfg.thresholds, cfg.seed).report
            control = ControlResult(model="constant", passed=rep.passed, verdict=rep.verdict, failed=rep.failed(),
                                    n_evaluated=rep.n_evaluated, csv=str(ctl_csv))
            rep.save(out / "control_report.json")
            times["control"] = time.perf_counter() - t
        mvm = None
        if cfg.mvm:
            from hil.validation.mvm import validate_mvm, write_mvm_figure

            t = time.perf_counter()
            log("[mvm] the same MVM test vectors on the backend and on the fitted simulator")
            # the simulator that went through the same protocol as the chip: both start the
            # MVM test's write-verify from the state that protocol leaves (the result depends
            # on it: docs/validation.md, "MVM and training level")
            mrep, ra, rb = validate_mvm(chip, sim)
            mrep.figures = [write_mvm_figure(ra, rb, report_dir / "mvm_errors.png").name]
            for warning in mrep.warnings:
                log(f"[mvm] warning: {warning}")
            mrep.save(out / "mvm_report.json")
            mvm = mrep.model_dump(mode="json")
            times["mvm"] = time.perf_counter() - t
    finally:
        if isinstance(backend, str):
            chip.close()
    return LoopResult(
        backend=spec,
        passed=comp.report.passed,
        chosen_model=cal.chosen,
        device_model=str(model_path),
        chip_csv=str(chip_csv),
        simulated_csv=str(sim_csv),
        report_dir=str(report_dir),
        validation=comp.report,
        control=control,
        mvm=mvm,
        seconds=times,
        config=cfg.model_dump(mode="json"),
    )
