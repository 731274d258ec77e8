"""``crosssim-lut``: CrossSim ``DG_LOOKUP`` tables (the ENODe ECRAM data of ../shared/data).

Two text files, ``dG_increasing.txt`` and ``dG_decreasing.txt`` (give either one,
or their directory): line 1 a title, line 2 the conductance bin centres (S),
line 3 the CDF levels (0..1), line 4 blank, then one row per CDF level with the
conductance change of one pulse (S) for each bin: the inverse CDF of the step,
per starting conductance.

Such a table *is* a device model, so it is imported directly as a ``table`` step
model: grid = the bin centres mapped to weights (first bin -> -1, last bin -> +1,
:class:`~hil.device_model.ConductanceMapping` ``gmin_gmax``), ``up_mean`` /
``down_mean`` = the mean of each bin's step distribution (the integral of the
inverse CDF over the CDF levels, trapezoid rule), ``up_std`` / ``down_std`` its
standard deviation.  Only the first two moments are kept: the shape of each
distribution (its skew, and the 1 uS quantization of the ENODe steps) is not,
and neither is any device-to-device spread (the table is one device).

The tables hold no pulse trains, but can be sampled into synthetic ones
(:meth:`LutTables.sample`): devices start at the lowest bin, every pulse draws
its step from the inverse CDF at the current conductance (linear interpolation
between the two neighbouring bins and between CDF levels), and the conductance
is kept inside the bin range.  ``hil calibrate --model X`` on a table fits model
``X`` to such trains; ``--model auto|table`` writes the table model itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from hil.calibration.importers.base import ImportResult, read_head
from hil.calibration.measurements import MeasurementError, MeasurementSet, sha256_file
from hil.config import HilModel
from hil.device_model import ConductanceMapping, DeviceModel, TableStep

TITLE = "1st Row = Gbins"
NAMES = ("dG_increasing.txt", "dG_decreasing.txt")


class LutOptions(HilModel):
    devices: int = Field(4, ge=1, description="synthetic devices sampled (for --model other than table)")
    cycles: int = Field(4, ge=1, description="synthetic cycles per device")
    n_up: int | None = Field(None, ge=1, description="up pulses per cycle (default: 1.2 x range / mean step)")
    n_down: int | None = Field(None, ge=1, description="down pulses per cycle (default likewise)")
    seed: int = 0


def _floats(text: str, src: str, line: int) -> np.ndarray:
    try:
        vals = [float(f) for f in text.split(",") if f.strip()]
    except ValueError as exc:
        raise MeasurementError(src, [f"{src}:line {line}: non-numeric value ({exc})"]) from None
    a = np.array(vals)
    if not np.all(np.isfinite(a)):
        raise MeasurementError(src, [f"{src}:line {line}: NaN/inf value"])
    return a


def read_lut(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(g_bins [G], cdf [P], dg [P, G])`` of one table file, checked."""
    src = str(path)
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    if len(lines) < 5 or not lines[0].strip().startswith(TITLE):
        raise MeasurementError(src, [f"{src}:line 1: expected a CrossSim lookup-table title starting with {TITLE!r}"])
    g = _floats(lines[1], src, 2)
    p = _floats(lines[2], src, 3)
    rows = [(i + 1, ln) for i, ln in enumerate(lines) if i >= 3 and ln.strip()]
    dg = np.array([_floats(ln, src, i) for i, ln in rows]) if rows else np.zeros((0, 0))
    problems = []
    if len(g) < 2 or np.any(np.diff(g) <= 0):
        problems.append(f"{src}:line 2: conductance bins must be at least 2 and strictly increasing")
    if len(p) < 2 or np.any(np.diff(p) <= 0) or p[0] < 0 or p[-1] > 1:
        problems.append(f"{src}:line 3: CDF levels must increase within [0, 1]")
    if dg.shape != (len(p), len(g)):
        problems.append(f"{src}: the step matrix is {dg.shape[0]}x{dg.shape[1] if dg.ndim == 2 else 0}, expected {len(p)} CDF rows x {len(g)} bins")
    elif np.any(np.diff(dg, axis=0) < -1e-15):
        k = int(np.nonzero((np.diff(dg, axis=0) < -1e-15).any(axis=1))[0][0])
        problems.append(f"{src}:line {rows[k + 1][0]}: the inverse CDF decreases (rows must be non-decreasing)")
    if problems:
        raise MeasurementError(src, problems)
    return g, p, dg


def _moments(p: np.ndarray, dg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # the CDF levels may not reach 0 and 1: the table's own range is what is known
    w = p[-1] - p[0]
    mean = np.trapezoid(dg, p, axis=0) / w
    m2 = np.trapezoid(dg * dg, p, axis=0) / w
    return mean, np.sqrt(np.clip(m2 - mean * mean, 0, None))


@dataclass
class LutTables:
    g: np.ndarray
    cdf: np.ndarray
    up: np.ndarray  # [P, G] steps of a potentiating pulse, siemens
    down: np.ndarray
    sources: list[str]

    def model(self, inputs: list[dict[str, str]]) -> DeviceModel:
        g_min, g_max = float(self.g[0]), float(self.g[-1])
        span = g_max - g_min
        grid = -1.0 + 2.0 * (self.g - g_min) / span
        mu_u, sd_u = _moments(self.cdf, self.up)
        mu_d, sd_d = _moments(self.cdf, self.down)
        k = 2.0 / span
        return DeviceModel(
            name="crosssim-lut",
            description=f"table step model from the CrossSim lookup tables {', '.join(Path(s).name for s in self.sources)}",
            source="crosssim-lut import (mean and std of each bin's step distribution)",
            step=TableStep(
                w_min=-1.0,
                w_max=1.0,
                grid=grid.tolist(),
                up_mean=(mu_u * k).tolist(),
                down_mean=(mu_d * k).tolist(),
                up_std=(sd_u * k).tolist(),
                down_std=(sd_d * k).tolist(),
            ),
            conductance=ConductanceMapping(g_min_s=g_min, g_max_s=g_max),
            provenance={"inputs": inputs, "format": "crosssim-lut"},
        )

    def default_pulses(self) -> tuple[int, int]:
        span = float(self.g[-1] - self.g[0])
        mu_u, _ = _moments(self.cdf, self.up)
        mu_d, _ = _moments(self.cdf, self.down)
        return (
            int(math.ceil(1.2 * span / max(float(np.abs(mu_u).mean()), 1e-30))),
            int(math.ceil(1.2 * span / max(float(np.abs(mu_d).mean()), 1e-30))),
        )

    def draw(self, g: np.ndarray, up: bool, u: np.ndarray) -> np.ndarray:
        """Steps (S) at conductances ``g`` for CDF levels ``u`` (inverse-CDF sampling)."""
        table = self.up if up else self.down
        gc = np.clip(g, self.g[0], self.g[-1])
        j = np.clip(np.searchsorted(self.g, gc), 1, len(self.g) - 1)
        t = (gc - self.g[j - 1]) / (self.g[j] - self.g[j - 1])
        uc = np.clip(u, self.cdf[0], self.cdf[-1])
        i = np.clip(np.searchsorted(self.cdf, uc), 1, len(self.cdf) - 1)
        s = (uc - self.cdf[i - 1]) / (self.cdf[i] - self.cdf[i - 1])

        def q(col: np.ndarray) -> np.ndarray:
            return table[i - 1, col] + s * (table[i, col] - table[i - 1, col])

        return (1 - t) * q(j - 1) + t * q(j)

    def sample(
        self,
        devices: int = 4,
        cycles: int = 4,
        n_up: int | None = None,
        n_down: int | None = None,
        seed: int = 0,
        inputs: list[dict[str, str]] | None = None,
    ) -> MeasurementSet:
        """Synthetic pulse trains drawn from the tables (see the module docstring)."""
        d_up, d_dn = self.default_pulses()
        n_up = n_up or d_up
        n_down = n_down or d_dn
        rng = np.random.default_rng(seed)
        g = np.full(devices, float(self.g[0]))
        rows_g = []
        rows_pol = []
        rows_cyc = []
        for c in range(cycles):
            for pol, n in ((1, n_up), (-1, n_down)):
                for _ in range(n):
                    g = np.clip(g + self.draw(g, pol > 0, rng.random(devices)), self.g[0], self.g[-1])
                    rows_g.append(g.copy())
                    rows_pol.append(pol)
                    rows_cyc.append(c)
        t = len(rows_g)
        gm = np.array(rows_g)  # [t, devices]
        ms = MeasurementSet(
            device=np.repeat(np.array([f"lut{d}" for d in range(devices)], dtype=object), t),
            cycle=np.tile(np.array(rows_cyc), devices),
            pulse=np.tile(np.arange(t), devices),
            polarity=np.tile(np.array(rows_pol), devices),
            conductance=gm.T.reshape(-1),
            source=f"samples of {', '.join(self.sources)}",
            inputs=list(inputs or []),
        )
        ms.notes.append(
            f"crosssim-lut: {devices} synthetic devices x {cycles} cycles of {n_up} up + {n_down} down "
            f"pulses drawn from the lookup tables (seed {seed}); no read noise, no device-to-device spread"
        )
        return ms


def _pair(path: Path) -> tuple[Path, Path]:
    if path.is_dir():
        inc, dec = path / NAMES[0], path / NAMES[1]
    elif "increasing" in path.name:
        inc, dec = path, path.with_name(path.name.replace("increasing", "decreasing"))
    elif "decreasing" in path.name:
        inc, dec = path.with_name(path.name.replace("decreasing", "increasing")), path
    else:
        raise MeasurementError(str(path), [f"{path}: name the increasing/decreasing table pair (dG_increasing.txt, dG_decreasing.txt) or their directory"])
    for p in (inc, dec):
        if not p.is_file():
            raise MeasurementError(str(path), [f"{p}: missing (a lookup table needs both directions)"])
    return inc, dec


def load_tables(path: Path) -> tuple[LutTables, list[dict[str, str]]]:
    inc, dec = _pair(path)
    g1, p1, up = read_lut(inc)
    g2, p2, down = read_lut(dec)
    if not (np.allclose(g1, g2) and np.allclose(p1, p2)):
        raise MeasurementError(str(dec), [f"{dec}: its conductance bins or CDF levels differ from {inc}"])
    inputs = [{"path": str(p), "sha256": sha256_file(p)} for p in (inc, dec)]
    return LutTables(g=g1, cdf=p1, up=up, down=down, sources=[str(inc), str(dec)]), inputs


class CrossSimLutImporter:
    name = "crosssim-lut"
    description = "CrossSim dG lookup tables (dG_increasing.txt + dG_decreasing.txt): a table device model"
    Options = LutOptions

    def detect(self, path: Path) -> bool:
        if path.is_dir():
            return (path / NAMES[0]).is_file() and (path / NAMES[1]).is_file()
        return path.is_file() and read_head(path, 200).strip().startswith(TITLE)

    def load(self, path: Path, options: HilModel) -> ImportResult:
        assert isinstance(options, LutOptions)
        tables, inputs = load_tables(path)
        model = tables.model(inputs)

        def sampler(**kw: object) -> MeasurementSet:
            args = {
                "devices": options.devices,
                "cycles": options.cycles,
                "n_up": options.n_up,
                "n_down": options.n_down,
                "seed": options.seed,
            }
            args.update(kw)  # type: ignore[arg-type]
            return tables.sample(inputs=inputs, **args)  # type: ignore[arg-type]

        notes = [
            "crosssim-lut: imported as a table step model directly (mean and std of each bin's step); "
            "the distribution shape and the 1 uS step quantization are not kept; one device, so no d2d"
        ]
        return ImportResult(device_model=model, inputs=inputs, notes=notes, sampler=sampler)


IMPORTER = CrossSimLutImporter()
