"""Run a pulse protocol, or replay a measurement file, on any :class:`~hil.backend.CrossbarBackend`.

Only the contract is used: ``pulse()``, ``read()`` and ``program()`` (plus a
write-verify on a subset of devices built from ``pulse()``/``read()``).  Rows are
appended to the output CSV (the measurement schema of :mod:`hil.calibration.schema`)
as they are measured and synced to disk after every step, so a crash loses at most
the step in progress; ``resume=True`` continues a file: devices are first written
back (write-verify) to the last state recorded for them, then the run goes on
with the next step.  A ``<out>.meta.json`` file beside the CSV records what ran
(backend, protocol or source file and its sha256, mapping) and is checked on resume.

Replay (``hil characterize --replay``): measured device ``i`` (in order of first
appearance) sits at array position ``(i // cols, i % cols)``.  Before the first
row every device is programmed to its first measured conductance (one
``program()`` call when the devices fill the array, else a write-verify of those
devices only); that first row is then read back, its own pulse is not replayed
(it happened before the read that defines the start).  Every later row applies
its pulse (``polarity`` +1/-1, none for 0) and reads.  Consecutive rows of
different devices are applied in one ``pulse()`` and one ``read()``; rows of one
device keep their order.  Where the file has ``amplitude_v`` / ``width_s`` and the
backend can apply pulse shapes (``info.pulse_shapes``: a simulator whose device model
has a pulse response), every pulse is applied with its row's |amplitude| and width;
otherwise every pulse is the backend's nominal one.  After a jump in ``pulse`` (unrecorded events) the
device is written to the conductance measured there before going on.  One row is
written per input row, in input order, with the same device/cycle/pulse/polarity
and optional columns, and the conductance read on the backend (``current_a`` is
recomputed as conductance x ``read_voltage_v`` when both exist, else left out).
"""

from __future__ import annotations

import csv
import datetime as _dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from hil.backend import CrossbarBackend, refine_step_estimate, verify_pulse_counts
from hil.calibration.mapping import Mapping
from hil.calibration.measurements import (
    MeasurementSet,
    MeasurementWriter,
    format_value,
    read_resume_state,
)
from hil.calibration.schema import OPTIONAL_COLUMNS
from hil.characterization.protocol import PulseProtocol
from hil.config import VersionedFile


def device_id(r: int, c: int) -> str:
    return f"r{r}c{c}"


def meta_path(out: str | Path) -> Path:
    p = Path(out)
    return p.with_name(p.stem + ".meta.json")


class CharacterizationMeta(VersionedFile):
    """Sidecar of a characterization output (``<out>.meta.json``)."""

    SCHEMA_VERSION = "1.0"
    kind: Literal["protocol", "replay"]
    backend: str = Field(description="backend spec string")
    backend_info: dict[str, Any] = Field(default_factory=dict)
    protocol: PulseProtocol | None = None
    source: dict[str, Any] | None = Field(None, description="replayed file: path, sha256, rows")
    mapping: dict[str, Any] = Field(default_factory=dict)
    positions: dict[str, tuple[int, int]] = Field(default_factory=dict)
    reads: int = 1
    columns: list[str] = Field(default_factory=list)
    started_at: str = ""
    finished_at: str | None = None
    rows_expected: int = 0
    rows_written: int = 0
    complete: bool = False
    resumed: int = 0


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="row", leave=False)


# ------------------------------------------------------------------ write-verify
def set_states(
    backend: CrossbarBackend,
    positions: list[tuple[int, int]],
    targets: np.ndarray,
    *,
    tol: float,
    max_iter: int = 50,
    n_reads: int = 4,
) -> bool:
    """Bring the devices at ``positions`` to ``targets`` (normalized weights).

    Uses ``backend.program()`` when the positions fill the whole array, else a
    write-verify of those devices only, with the rounds of ``program()`` (the same pulse
    counts and step estimates; pulses go to no other device).  Returns
    whether all of them ended within ``tol``.
    """
    rows, cols = backend.shape
    tgt = np.asarray(targets, dtype=np.float64)
    if len(set(positions)) == rows * cols:
        full = torch.zeros(rows, cols, dtype=torch.float32, device=backend.device)
        for (r, c), t in zip(positions, tgt, strict=True):
            full[r, c] = float(t)
        rep = backend.program(full, tol=tol, max_iter=max_iter, n_reads=n_reads)
        return rep.converged
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=backend.device)
    target = torch.zeros(rows, cols, dtype=torch.float32, device=backend.device)
    for (r, c), t in zip(positions, tgt, strict=True):
        mask[r, c] = True
        target[r, c] = float(t)
    info = backend.info
    cap = 32 if info.max_pulses_per_call is None else min(32, info.max_pulses_per_call)
    step = torch.full((rows, cols), info.dw_min, device=backend.device)
    w = backend.read(n_reads).to(torch.float32)
    for _ in range(int(max_iter)):
        err = target - w
        todo = mask & (err.abs() > tol)
        if not bool(todo.any()):
            break
        n = verify_pulse_counts(err, step, todo, cap)
        backend.pulse(n)
        w_new = backend.read(n_reads).to(torch.float32)
        step = refine_step_estimate(step, n, w, w_new, info.dw_min)
        w = w_new
    return bool(((target - w).abs() <= tol)[mask].all())


# ------------------------------------------------------------------ replay
def replay_positions(ms: MeasurementSet, backend: CrossbarBackend) -> dict[str, tuple[int, int]]:
    rows, cols = backend.shape
    names = ms.devices
    if len(names) > rows * cols:
        raise ValueError(
            f"{ms.source} has {len(names)} devices, the backend array has only {rows}x{cols} = {rows * cols}"
        )
    return {d: (i // cols, i % cols) for i, d in enumerate(names)}


def replay_columns(ms: MeasurementSet) -> list[str]:
    cols = ms.columns()
    if "current_a" in cols and "read_voltage_v" not in ms.optional:
        cols.remove("current_a")
    return cols


def iter_replay(
    backend: CrossbarBackend,
    ms: MeasurementSet,
    mapping: Mapping,
    *,
    reads: int = 1,
    tol: float = 0.02,
    max_iter: int = 50,
    program_reads: int = 4,
    start_row: int = 0,
    resume_g: dict[str, float] | None = None,
    restart_rows: np.ndarray | None = None,
    restart_g: np.ndarray | None = None,
    pulse_shapes: bool | None = None,
) -> Iterator[tuple[list[int], np.ndarray]]:
    """Yield ``(input row indices, conductances read)`` group by group (see the module doc).

    ``pulse_shapes``: apply every pulse with its row's ``amplitude_v`` / ``width_s`` (the
    |amplitude| and the width; rows without a finite positive value get the backend's
    nominal pulse).  None (default): where the file has either column and the backend
    can apply pulse shapes (``info.pulse_shapes``, e.g. a simulator whose device model has
    a pulse response); otherwise every pulse is the backend's nominal pulse.

    ``restart_rows`` (bool per row) marks extra rows where the device is written to the
    measured conductance before the read, as at a segment start (for example the first
    held-out row, so that held-out rows are scored from where the device was).
    ``restart_g`` (siemens, one per row; NaN: the measured one) replaces the measured
    conductance written at those extra rows, e.g. a model's prediction of that read from
    the earlier rows (``hil calibrate``'s held-out check); segment starts keep theirs.
    """
    positions = replay_positions(ms, backend)
    codes, names = ms.device_codes()
    starts = ms.segment_starts()
    seg_starts = starts
    if restart_rows is not None:
        starts = starts | np.asarray(restart_rows, dtype=bool)
    n = len(ms)
    target_g = np.asarray(ms.conductance, dtype=np.float64)
    if restart_g is not None:
        given = np.asarray(restart_g, dtype=np.float64)
        if given.shape != (n,):
            raise ValueError(f"restart_g has shape {given.shape}, expected one conductance per row ({n},)")
        use = np.isfinite(given) & starts & ~seg_starts
        target_g = np.where(use, given, target_g)
    first = {d: int(np.nonzero(codes == i)[0][0]) for i, d in enumerate(names)}
    targets_g = []
    for d in names:
        if resume_g is not None and d in resume_g and first[d] < start_row:
            targets_g.append(resume_g[d])
        else:
            targets_g.append(float(ms.conductance[first[d]]))
    devs = np.array(names, dtype=object)
    targets = mapping.to_weight(np.array(targets_g), devs)
    set_states(backend, [positions[d] for d in names], targets, tol=tol, max_iter=max_iter, n_reads=program_reads)
    rows, cols = backend.shape
    shape_cols = replay_shape_columns(ms, backend) if pulse_shapes is None else (
        replay_shape_columns(ms, backend, required=True) if pulse_shapes else {})
    pos_r = np.array([positions[d][0] for d in names])
    pos_c = np.array([positions[d][1] for d in names])
    i = start_row
    while i < n:
        group: list[int] = []
        seen: set[int] = set()
        j = i
        while j < n and int(codes[j]) not in seen:
            seen.add(int(codes[j]))
            group.append(j)
            j += 1
        restart = [k for k in group if starts[k] and first[names[codes[k]]] != k]
        if restart:
            w_t = mapping.to_weight(target_g[restart], ms.device[restart])
            set_states(
                backend,
                [positions[names[codes[k]]] for k in restart],
                w_t,
                tol=tol,
                max_iter=max_iter,
                n_reads=program_reads,
            )
        pulsed = [k for k in group if not starts[k] and ms.polarity[k] != 0]
        if pulsed:
            _pulse_rows(backend, ms, pulsed, pos_r[codes[pulsed]], pos_c[codes[pulsed]], shape_cols)
        w = backend.read(reads).detach().to("cpu", torch.float64).numpy()
        idx = np.array(group)
        wv = w[pos_r[codes[idx]], pos_c[codes[idx]]]
        yield group, mapping.to_conductance(wv, ms.device[idx])
        i = j


def replay_shape_columns(
    ms: MeasurementSet, backend: CrossbarBackend, required: bool = False
) -> dict[str, np.ndarray]:
    """The pulse-shape columns (``amplitude_v``, ``width_s``) a replay of ``ms`` applies on
    ``backend``: those the file has, if the backend can apply shapes (else none; with
    ``required``, a clear error instead)."""
    have = {k: np.asarray(ms.optional[k], dtype=np.float64) for k in ("amplitude_v", "width_s") if k in ms.optional}
    can = backend.info.pulse_shapes
    if required and not (have and can):
        why = "the file has no amplitude_v / width_s column" if not have else (
            f"{backend.info.name} applies its nominal pulse only (info.pulse_shapes is False)")
        raise ValueError(f"replay with pulse shapes: {why}")
    return have if can else {}


def _pulse_rows(
    backend: CrossbarBackend,
    ms: MeasurementSet,
    rows_k: list[int],
    pos_r: np.ndarray,
    pos_c: np.ndarray,
    shape_cols: dict[str, np.ndarray],
) -> None:
    """One pulse per row ``rows_k`` (at the devices ``pos_r``, ``pos_c``; one row per device):
    with the rows' shapes where ``shape_cols`` gives valid ones, the nominal pulse elsewhere
    (two ``pulse()`` calls where both occur)."""
    k = np.asarray(rows_k)
    pol = torch.as_tensor(ms.polarity[k].astype(np.int64))
    ok = np.ones(len(k), dtype=bool)
    for v in shape_cols.values():
        ok &= np.isfinite(v[k]) & (v[k] != 0)
    if not shape_cols:
        ok[:] = False
    shape = backend.shape
    for sel, shaped in ((ok, True), (~ok, False)):
        if not sel.any():
            continue
        counts = torch.zeros(shape, dtype=torch.int64)
        counts[pos_r[sel], pos_c[sel]] = pol[sel]
        kwargs: dict[str, torch.Tensor] = {}
        if shaped:
            for name, v in shape_cols.items():
                t = torch.ones(shape, dtype=torch.float64)
                t[pos_r[sel], pos_c[sel]] = torch.as_tensor(np.abs(v[k[sel]]))
                kwargs[name] = t.to(backend.device)
        backend.pulse(counts.to(backend.device), **kwargs)


def replay_to_set(
    backend: CrossbarBackend,
    ms: MeasurementSet,
    mapping: Mapping,
    **kwargs: Any,
) -> MeasurementSet:
    """Replay in memory; returns the replayed rows as a :class:`MeasurementSet`."""
    g = np.zeros(len(ms))
    for group, values in iter_replay(backend, ms, mapping, **kwargs):
        g[group] = values
    out = ms.subset(np.ones(len(ms), dtype=bool))
    out.conductance = g
    out.source = f"replay of {ms.source}"
    if "current_a" in out.optional:
        if "read_voltage_v" in out.optional:
            out.optional["current_a"] = g * out.optional["read_voltage_v"]
        else:
            del out.optional["current_a"]
    return out


def _row_values(ms: MeasurementSet, k: int, g: float, cols: list[str]) -> list[str]:
    out = []
    for c in cols:
        if c == "conductance":
            out.append(format_value(c, g))
        elif c == "current_a":
            out.append(format_value(c, g * float(ms.optional["read_voltage_v"][k])))
        else:
            out.append(ms.row_values(k, [c])[0])
    return out


def _read_partial(path: Path) -> tuple[list[str], list[float], list[str]]:
    """Device ids, conductances and last lines of a (possibly partial) output CSV."""
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]
    reader = csv.reader(lines)
    header = next(reader)
    di, gi = header.index("device"), header.index("conductance")
    devs, gs = [], []
    for r in reader:
        devs.append(r[di])
        gs.append(float(r[gi]))
    return devs, gs, header


def _truncate_rows(path: Path, keep: int) -> None:
    """Keep the comment lines, the header and the first ``keep`` data rows of ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    out = []
    seen_header = False
    data = 0
    for ln in lines:
        if ln.startswith("#") or not seen_header:
            out.append(ln)
            if not ln.startswith("#"):
                seen_header = True
            continue
        if data < keep:
            out.append(ln)
            data += 1
    path.write_text("".join(out), encoding="utf-8")


def _open_output(
    out: Path,
    columns: list[str],
    meta: CharacterizationMeta,
    resume: bool,
    same: Callable[[CharacterizationMeta], str | None],
) -> tuple[CharacterizationMeta, int, bool]:
    """The run's meta, the complete rows already in ``out`` and whether to append to it."""
    mpath = meta_path(out)
    if resume and out.exists():
        if not mpath.exists():
            raise ValueError(f"cannot resume {out}: its {mpath.name} is missing")
        old = CharacterizationMeta.load(mpath)
        why = same(old)
        if why:
            raise ValueError(f"cannot resume {out}: {why}")
        done = read_resume_state(out, columns)
        old.resumed += 1
        old.complete = False
        old.finished_at = None
        old.save(mpath)
        return old, done, True
    meta.save(mpath)
    return meta, 0, False


def replay_to_file(
    backend: CrossbarBackend,
    ms: MeasurementSet,
    mapping: Mapping,
    out: str | Path,
    *,
    backend_spec: str = "",
    reads: int = 1,
    tol: float = 0.02,
    max_iter: int = 50,
    program_reads: int = 4,
    resume: bool = False,
    progress: bool = True,
    restart_rows: np.ndarray | None = None,
) -> CharacterizationMeta:
    """Replay ``ms`` on ``backend`` into ``out`` (written as measured; ``resume`` continues)."""
    out = Path(out)
    cols = replay_columns(ms)
    positions = replay_positions(ms, backend)
    source = {
        "path": ms.source,
        "sha256": ms.inputs[0]["sha256"] if ms.inputs else "",
        "rows": len(ms),
        "restarts": int(np.asarray(restart_rows, dtype=bool).sum()) if restart_rows is not None else 0,
    }
    meta = CharacterizationMeta(
        kind="replay",
        backend=backend_spec,
        backend_info=backend.info.model_dump(mode="json"),
        source=source,
        mapping=mapping.provenance(),
        positions=positions,
        reads=reads,
        columns=cols,
        started_at=_now(),
        rows_expected=len(ms),
    )

    def same(old: CharacterizationMeta) -> str | None:
        if old.kind != "replay":
            return f"it holds a {old.kind} run, not a replay"
        prev = old.source or {}
        if prev.get("sha256") != source["sha256"] or prev.get("rows") != len(ms):
            return f"it replays another file ({prev.get('path')})"
        if prev.get("restarts", 0) != source["restarts"]:
            return "it was replayed with other restart rows (--restart-at-holdout)"
        if old.backend != backend_spec:
            return f"it ran on backend {old.backend!r}, not {backend_spec!r}"
        return None

    meta, done, append = _open_output(out, cols, meta, resume, same)
    resume_g = None
    if done:
        devs, gs, _ = _read_partial(out)
        resume_g = dict(zip(devs[:done], gs[:done], strict=True))
    if done >= len(ms):
        meta.complete = True
        meta.rows_written = done
        meta.finished_at = meta.finished_at or _now()
        meta.save(meta_path(out))
        return meta
    pending: dict[int, float] = {}
    next_row = done
    bar = _progress(len(ms), progress, "replay")
    bar.update(done)
    with MeasurementWriter(out, cols, metadata={"replay_of": ms.source, "backend": backend_spec}, append=append) as w:
        for group, values in iter_replay(
            backend,
            ms,
            mapping,
            reads=reads,
            tol=tol,
            max_iter=max_iter,
            program_reads=program_reads,
            start_row=done,
            resume_g=resume_g,
            restart_rows=restart_rows,
        ):
            for k, g in zip(group, values, strict=True):
                pending[k] = float(g)
            batch = []
            while next_row in pending:
                batch.append(_row_values(ms, next_row, pending.pop(next_row), cols))
                next_row += 1
            w.write_rows(batch)
            bar.update(len(batch))
        meta.rows_written = done + w.rows_written
    bar.close()
    meta.complete = meta.rows_written == len(ms)
    meta.finished_at = _now()
    meta.save(meta_path(out))
    return meta


# ------------------------------------------------------------------ protocol
def protocol_columns(p: PulseProtocol) -> list[str]:
    cols = ["device", "cycle", "pulse", "polarity", "conductance"]
    if any(v is not None for v in (p.amplitude_up_v, p.amplitude_down_v, p.sweep_up_v, p.sweep_down_v)):
        cols.append("amplitude_v")
    if p.width_s is not None or p.widths_s is not None:
        cols.append("width_s")
    if p.read_voltage_v is not None:
        cols.append("read_voltage_v")
    cols.append("time_s")
    return [c for c in cols if c in ("device", "cycle", "pulse", "polarity", "conductance") or c in OPTIONAL_COLUMNS]


def run_protocol(
    backend: CrossbarBackend,
    protocol: PulseProtocol,
    mapping: Mapping,
    out: str | Path,
    *,
    backend_spec: str = "",
    resume: bool = False,
    progress: bool = True,
    max_iter: int = 50,
    program_reads: int = 4,
) -> CharacterizationMeta:
    """Run ``protocol`` on ``backend``, writing every step's rows to ``out`` as measured."""
    out = Path(out)
    rows, cols = backend.shape
    positions = protocol.select_devices(rows, cols)
    ids = [device_id(r, c) for r, c in positions]
    steps = protocol.schedule()
    columns = protocol_columns(protocol)
    meta = CharacterizationMeta(
        kind="protocol",
        backend=backend_spec,
        backend_info=backend.info.model_dump(mode="json"),
        protocol=protocol,
        mapping=mapping.provenance(),
        positions=dict(zip(ids, positions, strict=True)),
        reads=protocol.reads,
        columns=columns,
        started_at=_now(),
        rows_expected=len(steps) * len(ids),
    )

    def same(old: CharacterizationMeta) -> str | None:
        if old.kind != "protocol":
            return f"it holds a {old.kind}, not a protocol run"
        if old.protocol is None or old.protocol.model_dump() != protocol.model_dump():
            return "it was measured with another protocol"
        if old.backend != backend_spec:
            return f"it ran on backend {old.backend!r}, not {backend_spec!r}"
        return None

    meta, done, append = _open_output(out, columns, meta, resume, same)
    n_dev = len(ids)
    if done % n_dev:
        _truncate_rows(out, done - done % n_dev)
        done -= done % n_dev
    first_step = done // n_dev
    t_offset = 0.0
    if done:
        devs, gs, header = _read_partial(out)
        last = dict(zip(devs, gs, strict=True))
        tgt = mapping.to_weight(np.array([last[d] for d in ids]), np.array(ids, dtype=object))
        set_states(backend, positions, tgt, tol=protocol.start_tol, max_iter=max_iter, n_reads=program_reads)
        if "time_s" in header:
            lines = [ln for ln in out.read_text().splitlines() if ln and not ln.startswith("#")]
            t_offset = float(lines[-1].split(",")[header.index("time_s")])
    elif protocol.start_weight is not None:
        set_states(
            backend,
            positions,
            np.full(n_dev, protocol.start_weight),
            tol=protocol.start_tol,
            max_iter=max_iter,
            n_reads=program_reads,
        )
    pr = torch.tensor([p[0] for p in positions], device=backend.device)
    pc = torch.tensor([p[1] for p in positions], device=backend.device)
    devs_arr = np.array(ids, dtype=object)
    shaped = backend.info.pulse_shapes
    if protocol.sweeps and not shaped:
        raise ValueError(
            f"protocol {protocol.name!r} sweeps the pulse amplitude or width, but {backend.info.name} applies its "
            "nominal pulse only (info.pulse_shapes is False); nothing was run"
        )
    shapes = protocol.step_shapes()
    bar = _progress(len(steps) * n_dev, progress, "characterize")
    bar.update(done)
    t0 = time.perf_counter()
    written = 0
    with MeasurementWriter(
        out, columns, metadata={"protocol": protocol.name, "backend": backend_spec}, append=append
    ) as w:
        for k in range(first_step, len(steps)):
            cyc, pol = steps[k]
            if pol != 0:
                counts = torch.zeros(rows, cols, dtype=torch.int64, device=backend.device)
                counts[pr, pc] = pol
                kw = {name: abs(v) for name, v in shapes[k].items()} if shaped else {}
                backend.pulse(counts, **kw)
            wv = backend.read(protocol.reads)[pr, pc].detach().to("cpu", torch.float64).numpy()
            g = mapping.to_conductance(wv, devs_arr)
            t = t_offset + time.perf_counter() - t0
            batch = []
            for d, gv in zip(ids, g, strict=True):
                vals: dict[str, Any] = {
                    "device": d,
                    "cycle": cyc,
                    "pulse": k,
                    "polarity": pol,
                    "conductance": gv,
                    "amplitude_v": shapes[k].get("amplitude_v", 0.0),
                    "width_s": shapes[k].get("width_s", 0.0),
                    "read_voltage_v": protocol.read_voltage_v,
                    "time_s": t,
                }
                batch.append([format_value(c, vals[c]) for c in columns])
            w.write_rows(batch)
            written += len(batch)
            bar.update(len(batch))
    bar.close()
    meta.rows_written = done + written
    meta.complete = meta.rows_written == len(steps) * n_dev
    meta.finished_at = _now()
    meta.save(meta_path(out))
    return meta
