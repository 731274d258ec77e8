"""``updown-columns``: one device's response to a train of up pulses and a train of down pulses.

Two comma-separated columns, optionally under one header row: column 1 is the
value read after each consecutive potentiating pulse, column 2 after each
depressing pulse (the layout of aihwkit's ``gong_et_al.csv``, HfO2 ReRAM, Gong et
al. 2018).  Values are often normalized: they are mapped to siemens as
``G = g_offset_s + value * g_per_unit_s`` (default 1 uS per unit, no offset), a
unit choice only (the normalized weight of a fit does not depend on it).

The two sweeps of such files need not be contiguous (the HfO2 up sweep ends at
1.07, the down sweep starts at 0.77), so the down sweep is numbered after a gap
of one pulse: the fit's filter and the replay restart from the measured value there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from hil.calibration.importers.base import ImportResult, read_head
from hil.calibration.measurements import MeasurementError, MeasurementSet, sha256_file
from hil.config import HilModel

GONG_SHA256 = "8f009fcbe88d818ae4defff5fb98483c203fcded7958678d42890f27e3e91881"

# aihwkit ReRamESPresetDevice (ExpStepDevice), src/aihwkit/simulator/presets/devices.py, as quoted in
# ../shared/data/reram-hfo2-gong/SOURCE.md: the published reference fit of this file.
AIHWKIT_RERAM_ES = {
    "source": "aihwkit ReRamESPresetDevice (ExpStepDevice), fitted to this file",
    "dw_min": 0.00135,
    "up_down": 0.259359,
    "w_max": 1.0,
    "w_min": -1.0,
    "a": -0.5,
    "b": -0.5,
    "gamma_up": 5.0,
    "gamma_down": 5.0,
    "A_up": -1.18445,
    "A_down": -0.081404,
    "dw_min_std": 5.0,
    "write_noise_std": 75.0,
}


class UpDownOptions(HilModel):
    g_per_unit_s: float = Field(1e-6, gt=0, description="siemens per unit of the file's values")
    g_offset_s: float = Field(0.0, description="siemens added after scaling")
    device: str | None = Field(None, description="device id (default: the file name without suffix)")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


class UpDownColumnsImporter:
    name = "updown-columns"
    description = "two columns, values after each up pulse and after each down pulse (aihwkit gong_et_al.csv)"
    Options = UpDownOptions

    def detect(self, path: Path) -> bool:
        if not path.is_file():
            return False
        lines = [ln for ln in read_head(path).splitlines() if ln.strip()]
        data = [ln for ln in lines if not ln.startswith("#")]
        if len(data) < 2:
            return False
        body = data[1] if not all(_is_number(f) for f in data[0].split(",")) else data[0]
        fields = [f.strip() for f in body.split(",")]
        return len(fields) == 2 and all(_is_number(f) for f in fields)

    def load(self, path: Path, options: HilModel) -> ImportResult:
        assert isinstance(options, UpDownOptions)
        src = str(path)
        text = path.read_text(encoding="utf-8-sig").splitlines()
        cols: list[list[float]] = [[], []]
        ended = [False, False]
        problems: list[str] = []
        first_data = True
        for ln, line in enumerate(text, start=1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = [f.strip() for f in line.split(",")]
            if first_data and not all(_is_number(f) for f in fields if f):
                first_data = False  # a header row
                continue
            first_data = False
            if len(fields) != 2:
                problems.append(f"{src}:line {ln}: expected 2 fields (up, down), found {len(fields)}")
                continue
            for j, f in enumerate(fields):
                if f == "":
                    ended[j] = True
                    continue
                if ended[j]:
                    problems.append(f"{src}:line {ln}: column {j + 1} has a value after an empty cell")
                    continue
                try:
                    v = float(f)
                except ValueError:
                    problems.append(f"{src}:line {ln}: column {j + 1} must be a number, found {f!r}")
                    continue
                if not np.isfinite(v):
                    problems.append(f"{src}:line {ln}: column {j + 1} is {f!r} (NaN/inf are not allowed)")
                    continue
                cols[j].append(v)
        if problems:
            raise MeasurementError(src, problems)
        n_up, n_dn = len(cols[0]), len(cols[1])
        if n_up < 2 or n_dn < 2:
            raise MeasurementError(src, [f"{src}: needs at least 2 values per column, found {n_up} up and {n_dn} down"])
        values = np.array(cols[0] + cols[1])
        device = options.device or path.stem
        sha = sha256_file(path)
        ms = MeasurementSet(
            device=[device] * (n_up + n_dn),
            cycle=[0] * (n_up + n_dn),
            pulse=list(range(n_up)) + list(range(n_up + 1, n_up + 1 + n_dn)),
            polarity=[1] * n_up + [-1] * n_dn,
            conductance=options.g_offset_s + values * options.g_per_unit_s,
            source=src,
            inputs=[{"path": src, "sha256": sha}],
        )
        ms.notes.append(
            f"updown-columns: values mapped to siemens as G = {options.g_offset_s:g} + value x "
            f"{options.g_per_unit_s:g} S (a unit choice; the file gives no physical scale)"
        )
        ms.notes.append(
            "updown-columns: the down sweep is numbered after a one-pulse gap, so fit and replay "
            "restart from its first measured value (the two sweeps need not be contiguous)"
        )
        ref = {"aihwkit_reram_es": AIHWKIT_RERAM_ES} if sha == GONG_SHA256 else {}
        ms.check()
        return ImportResult(measurements=ms, inputs=ms.inputs, notes=list(ms.notes), reference=ref)


IMPORTER = UpDownColumnsImporter()
