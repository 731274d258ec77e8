"""``wgfmu-summary``: Keysight WGFMU amplitude-sweep exports (``*_Summary.dat``, ferroelectric set).

Layout of one file (one run): line 1-2 test date/time/device name/id; line 3-4
the WGFMU parameters (``pulseWidth`` among them); line 5-6 the author's own
NeuroSim-style fit (``A_LTP``, ``NL_LTP``, ... kept as a reference in the report);
line 7 the header ``Pulse Number,index,Pulse Amplitude (V),R_low (ohm),R_high (ohm)``;
then one row per pulse, the resistance read after it.

Mapping to the schema:

- ``device`` = ``device_id`` (line 2); ``cycle`` = the run's rank among that device's
  runs in time order (date and time of line 2); a directory is read whole;
- ``pulse`` = the original pulse ``index`` (gaps are pulses the author trimmed:
  fit and replay restart from the next measured value), offset so that it keeps
  increasing across the runs of a device, with a gap between runs;
- ``conductance`` = the mean of ``1/R_low`` and ``1/R_high`` (as the author's
  ``fit_piecewise.py`` does; ``conductance=low|high`` picks one of them);
- ``polarity`` = ``-1`` for a positive amplitude (in these devices a positive pulse
  raises R, i.e. lowers G), ``+1`` for a negative one, ``0`` for 0 V;
- ``amplitude_v`` = the applied amplitude (signed), ``width_s`` = ``pulseWidth``;
  ``x_file`` names the run.
- Rows with a non-finite or non-positive resistance are excluded and counted.

What the fitted model can and cannot represent here: every run sweeps the
amplitude (e.g. +0.2 to +2.4 V, then -0.2 to -2.0 V) and the runs use pulse widths
from 20 ns to 5 ms.  ``hil calibrate`` fits a KAI / Merz law of the pulse's
amplitude and width (:mod:`hil.calibration.pulse_law`), which scales each pulse's
step, and keeps it where the BIC falls (on this set it does, by about 1000).  The
model then predicts the response to a given amplitude and width within the ranges
measured, and the simulator applies it where pulses carry a shape (a replay of
these files).  It has one law for all devices and states (no device-to-device
spread of the law, no history such as the wake-up of the window between runs), and
identical-pulse training runs with the nominal pulse the calibration names.  With
``--pulse-response none`` (an identical-pulse model), the step model folds the
amplitude ramp into its state dependence along the sweep path instead, and cannot
predict the response to a given amplitude or width at all.
"""

from __future__ import annotations

import csv
import datetime as _dt
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from hil.calibration.importers.base import ImportResult, read_head
from hil.calibration.measurements import Exclusion, MeasurementError, MeasurementSet, sha256_file
from hil.config import HilModel

HEADER = ["Pulse Number", "index", "Pulse Amplitude (V)", "R_low (ohm)", "R_high (ohm)"]

LIMITATION_NOTE = (
    "wgfmu-summary: the pulses are NOT identical: each run sweeps the amplitude "
    "({amp}) with pulse widths {widths}. A pulse-response law (KAI / Merz, one for all devices "
    "and states, no wake-up between runs) can represent the response to each amplitude and width "
    "within these ranges (see the pulse-response note); an identical-pulse model (--pulse-response "
    "none) folds the amplitude ramp into its state dependence along the sweep path and cannot."
)


class WgfmuOptions(HilModel):
    conductance: Literal["mean", "low", "high"] = Field(
        "mean", description="mean of 1/R_low and 1/R_high, or one of them"
    )
    pattern: str = Field("*_Summary.dat", description="file pattern when a directory is given")


def _run(path: Path, opts: WgfmuOptions) -> dict[str, Any]:
    src = str(path)
    rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    problems: list[str] = []
    if len(rows) < 8:
        raise MeasurementError(src, [f"{src}: expected 7 header lines and data, found {len(rows)} lines"])
    if rows[0][:4] != ["test_date", "test_time", "device_name", "device_id"]:
        raise MeasurementError(src, [f"{src}:line 1: expected 'test_date,test_time,device_name,device_id', found {','.join(rows[0])!r}"])
    if [c.strip() for c in rows[6]] != HEADER:
        raise MeasurementError(src, [f"{src}:line 7: expected header {','.join(HEADER)!r}, found {','.join(rows[6])!r}"])
    date, tim, _, dev = (rows[1] + ["", "", "", ""])[:4]
    if not dev.strip():
        raise MeasurementError(src, [f"{src}:line 2: empty device_id"])
    try:
        stamp = _dt.datetime.strptime(f"{date.strip()} {tim.strip()}", "%d.%m.%Y %H:%M:%S")
    except ValueError:
        raise MeasurementError(src, [f"{src}:line 2: test_date/test_time {date!r} {tim!r} is not DD.MM.YYYY HH:MM:SS"]) from None
    params = dict(zip(rows[2], rows[3], strict=False))
    try:
        width = float(params.get("pulseWidth", "nan"))
    except ValueError:
        width = float("nan")
    author = {}
    for k, v in zip(rows[4], rows[5], strict=False):
        try:
            author[k] = float(v)
        except ValueError:
            author[k] = v
    idx, amp, g, lines = [], [], [], []
    excluded = 0
    for ln, r in enumerate(rows[7:], start=8):
        if not r or all(not f.strip() for f in r):
            continue
        if len(r) != 5:
            problems.append(f"{src}:line {ln}: expected 5 fields, found {len(r)}")
            continue
        try:
            vals = [float(f) for f in r]
        except ValueError:
            problems.append(f"{src}:line {ln}: non-numeric value in {r}")
            continue
        if not np.isfinite(vals[1]) or vals[1] != int(vals[1]) or not np.isfinite(vals[2]):
            problems.append(f"{src}:line {ln}: index must be an integer and amplitude finite, found {r[1]!r}, {r[2]!r}")
            continue
        r_lo, r_hi = vals[3], vals[4]
        if not (np.isfinite(r_lo) and np.isfinite(r_hi) and r_lo > 0 and r_hi > 0):
            excluded += 1
            continue
        gv = {"mean": 0.5 * (1 / r_lo + 1 / r_hi), "low": 1 / r_lo, "high": 1 / r_hi}[opts.conductance]
        idx.append(int(vals[1]))
        amp.append(vals[2])
        g.append(gv)
        lines.append(ln)
        if len(problems) >= 20:
            break
    if problems:
        raise MeasurementError(src, problems)
    if any(b <= a for a, b in zip(idx, idx[1:], strict=False)):
        raise MeasurementError(src, [f"{src}: the index column must increase"])
    return {
        "path": path,
        "device": dev.strip(),
        "stamp": stamp,
        "width": width,
        "author": author,
        "index": np.array(idx, dtype=np.int64),
        "amplitude": np.array(amp),
        "g": np.array(g),
        "line": np.array(lines),
        "excluded": excluded,
        "sha256": sha256_file(path),
    }


class WgfmuSummaryImporter:
    name = "wgfmu-summary"
    description = "Keysight WGFMU amplitude-sweep *_Summary.dat exports (a file or a directory of them)"
    Options = WgfmuOptions

    def detect(self, path: Path) -> bool:
        if path.is_dir():
            return any(path.glob("*_Summary.dat"))
        return path.is_file() and read_head(path, 200).startswith("test_date,test_time,device_name,device_id")

    def load(self, path: Path, options: HilModel) -> ImportResult:
        assert isinstance(options, WgfmuOptions)
        files = sorted(path.glob(options.pattern)) if path.is_dir() else [path]
        if not files:
            raise MeasurementError(str(path), [f"{path}: no files match {options.pattern!r}"])
        runs = [_run(f, options) for f in files]
        runs.sort(key=lambda r: (r["device"], r["stamp"], str(r["path"])))
        parts = []
        cycle: dict[str, int] = {}
        offset: dict[str, int] = {}
        excluded = 0
        reference: dict[str, Any] = {}
        for r in runs:
            d = r["device"]
            c = cycle.get(d, 0)
            cycle[d] = c + 1
            base = offset.get(d, 0)
            pulse = base + r["index"] - int(r["index"][0])
            offset[d] = int(pulse[-1]) + 2  # a gap between runs
            n = len(pulse)
            amp = r["amplitude"]
            pol = np.where(amp > 0, -1, np.where(amp < 0, 1, 0))
            parts.append(
                MeasurementSet(
                    device=[d] * n,
                    cycle=[c] * n,
                    pulse=pulse,
                    polarity=pol,
                    conductance=r["g"],
                    optional={"amplitude_v": amp, "width_s": np.full(n, r["width"])},
                    extra={"x_file": [r["path"].name] * n},
                    line=r["line"],
                    source=str(r["path"]),
                    inputs=[{"path": str(r["path"]), "sha256": r["sha256"]}],
                )
            )
            excluded += r["excluded"]
            reference[r["path"].name] = {"device": d, "cycle": c, **r["author"]}
        ms = MeasurementSet.concat(parts, source=str(path))
        if excluded:
            ms.exclusions.append(Exclusion(rule="non-finite or non-positive resistance", rows=excluded))
        amps = np.concatenate([r["amplitude"] for r in runs])
        pos, neg = amps[amps > 0], amps[amps < 0]
        ranges = []
        if len(pos):
            ranges.append(f"+{pos.min():g}..+{pos.max():g} V")
        if len(neg):
            ranges.append(f"{neg.max():g}..{neg.min():g} V")
        widths = sorted({r["width"] for r in runs if np.isfinite(r["width"])})
        ms.notes.append(
            LIMITATION_NOTE.format(
                amp=" then ".join(ranges) or "0 V",
                widths=f"{widths[0]:g}..{widths[-1]:g} s" if widths else "unknown",
            )
        )
        ms.notes.append(
            f"wgfmu-summary: conductance = {options.conductance} of 1/R_low, 1/R_high; positive amplitude = "
            "depression (polarity -1); cycles are runs in time order per device"
        )
        ms = ms.check()
        return ImportResult(
            measurements=ms,
            inputs=ms.inputs,
            notes=list(ms.notes),
            reference={"author_fits": reference},
        )


IMPORTER = WgfmuSummaryImporter()
