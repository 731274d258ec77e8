"""Pulse-response measurements in memory (:class:`MeasurementSet`), and reading/writing the CSV schema.

See :mod:`hil.calibration.schema` for the columns.  Every problem found while
loading is reported with the file, the line and what is wrong; up to
``MAX_PROBLEMS`` problems are collected before one :class:`MeasurementError` is
raised.  Rows are never dropped silently: a documented exclusion rule (for
example ``drop_short_devices``) records what it removed in
:attr:`MeasurementSet.exclusions`, and the fit report prints it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hil.calibration.schema import (
    CONDUCTANCE_COLUMNS,
    EXTRA_PREFIX,
    MAX_CONDUCTANCE_S,
    MIN_PULSES_PER_DEVICE,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    SCHEMA_NAME,
    SCHEMA_VERSION,
)
from hil.config import atomic_write_text

MAX_PROBLEMS = 20


class MeasurementError(ValueError):
    """Malformed measurement input; ``problems`` lists each one as ``file:line: problem``."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        more = "" if len(self.problems) < MAX_PROBLEMS else f"\n  (stopped after {MAX_PROBLEMS} problems)"
        text = "\n  ".join(self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s) in the measurement data:\n  {text}{more}")


@dataclass
class Exclusion:
    """Rows removed by a documented rule (counted, never silent)."""

    rule: str
    rows: int
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "rows": self.rows, "detail": self.detail}


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class MeasurementSet:
    """Rows of the pulse-response schema as numpy columns (file order kept).

    ``conductance`` is in siemens; ``optional`` holds the optional numeric
    columns present (``amplitude_v``, ...), ``extra`` the ``x_*`` text columns.
    ``line`` is the source line of each row (``-1`` when made in memory).
    """

    device: np.ndarray
    cycle: np.ndarray
    pulse: np.ndarray
    polarity: np.ndarray
    conductance: np.ndarray
    optional: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    line: np.ndarray | None = None
    source: str = "<memory>"
    inputs: list[dict[str, str]] = field(default_factory=list)
    exclusions: list[Exclusion] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.device)
        self.device = np.asarray(self.device, dtype=object)
        self.cycle = np.asarray(self.cycle, dtype=np.int64)
        self.pulse = np.asarray(self.pulse, dtype=np.int64)
        self.polarity = np.asarray(self.polarity, dtype=np.int64)
        self.conductance = np.asarray(self.conductance, dtype=np.float64)
        for name in ("cycle", "pulse", "polarity", "conductance"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"MeasurementSet: column {name} has {len(getattr(self, name))} rows, device has {n}")
        self.optional = {k: np.asarray(v, dtype=np.float64) for k, v in self.optional.items()}
        self.extra = {k: np.asarray(v, dtype=object) for k, v in self.extra.items()}
        for k in self.optional:
            if k not in OPTIONAL_COLUMNS:
                raise ValueError(f"MeasurementSet: unknown optional column {k!r} (known: {', '.join(OPTIONAL_COLUMNS)})")
        for k in self.extra:
            if not k.startswith(EXTRA_PREFIX):
                raise ValueError(f"MeasurementSet: extra column {k!r} must start with {EXTRA_PREFIX!r}")
        if self.line is None:
            self.line = np.full(n, -1, dtype=np.int64)
        self.line = np.asarray(self.line, dtype=np.int64)

    # ------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(len(self.device))

    @property
    def devices(self) -> list[str]:
        """Device ids in order of first appearance."""
        seen: dict[str, None] = {}
        for d in self.device:
            seen.setdefault(str(d), None)
        return list(seen)

    def device_codes(self) -> tuple[np.ndarray, list[str]]:
        """Integer code per row (index into :attr:`devices`) and the device list."""
        names = self.devices
        index = {d: i for i, d in enumerate(names)}
        return np.fromiter((index[str(d)] for d in self.device), dtype=np.int64, count=len(self)), names

    def where(self, i: int) -> str:
        ln = int(self.line[i]) if self.line is not None else -1
        return f"line {ln}" if ln >= 0 else f"row {i}"

    def subset(self, mask: np.ndarray) -> MeasurementSet:
        """Rows where ``mask`` is true (a new set; metadata and notes kept)."""
        mask = np.asarray(mask)
        return MeasurementSet(
            device=self.device[mask],
            cycle=self.cycle[mask],
            pulse=self.pulse[mask],
            polarity=self.polarity[mask],
            conductance=self.conductance[mask],
            optional={k: v[mask] for k, v in self.optional.items()},
            extra={k: v[mask] for k, v in self.extra.items()},
            line=self.line[mask] if self.line is not None else None,
            source=self.source,
            inputs=list(self.inputs),
            exclusions=list(self.exclusions),
            metadata=dict(self.metadata),
            notes=list(self.notes),
        )

    def segment_starts(self) -> np.ndarray:
        """True where a row starts a contiguous run of its device: its first row, or after a
        jump of more than 1 in ``pulse`` (unrecorded events: the state is re-read there)."""
        codes, _ = self.device_codes()
        start = np.ones(len(self), dtype=bool)
        last_pulse: dict[int, int] = {}
        for i, c in enumerate(codes):
            p = int(self.pulse[i])
            prev = last_pulse.get(int(c))
            start[i] = prev is None or p - prev > 1
            last_pulse[int(c)] = p
        return start

    def columns(self) -> list[str]:
        cols = [*REQUIRED_COLUMNS, "conductance"]
        cols += [k for k in OPTIONAL_COLUMNS if k in self.optional]
        cols += sorted(self.extra)
        return cols

    # ------------------------------------------------------------ checks
    def check(
        self,
        min_pulses: int = MIN_PULSES_PER_DEVICE,
        drop_short_devices: bool = False,
    ) -> MeasurementSet:
        """Check the rules that involve several rows; return self, or a copy without short devices.

        Raises :class:`MeasurementError` naming the source, line and problem for a polarity
        outside {-1, 0, 1}, a conductance that is not finite or implausibly large (at least
        ``MAX_CONDUCTANCE_S``), rows of a device out of pulse order, a cycle that goes back,
        or (unless ``drop_short_devices``) a device with fewer than ``min_pulses`` pulse rows.
        Importers call it on the sets they build, so these rules hold for every format.
        """
        problems: list[str] = []
        pos = np.arange(len(self))
        codes, names = self.device_codes()
        order = np.lexsort((pos, codes))
        same = codes[order][1:] == codes[order][:-1]
        dp = np.diff(self.pulse[order])
        dc = np.diff(self.cycle[order])
        for k in np.nonzero(same & (dp <= 0))[0][:MAX_PROBLEMS]:
            i, j = order[k], order[k + 1]
            problems.append(
                f"{self.source}:{self.where(j)}: device {names[codes[j]]!r} pulse {self.pulse[j]} does not "
                f"follow pulse {self.pulse[i]} ({self.where(i)}); rows of a device must be in "
                "increasing pulse order"
            )
        for k in np.nonzero(same & (dc < 0))[0][: MAX_PROBLEMS - len(problems)]:
            i, j = order[k], order[k + 1]
            problems.append(
                f"{self.source}:{self.where(j)}: device {names[codes[j]]!r} cycle {self.cycle[j]} after "
                f"cycle {self.cycle[i]} ({self.where(i)}); cycles must not go back along a device"
            )
        for i in np.nonzero(~np.isin(self.polarity, (-1, 0, 1)))[0][:5]:
            problems.append(
                f"{self.source}:{self.where(int(i))}: polarity must be -1, 0 or +1, found {self.polarity[i]}"
            )
        big = np.nonzero(~(np.abs(self.conductance) < MAX_CONDUCTANCE_S))[0]
        for i in big[: min(5, MAX_PROBLEMS - len(problems))]:
            problems.append(
                f"{self.source}:{self.where(int(i))}: conductance {self.conductance[i]:g} S is not finite or not "
                f"a plausible device conductance (>= {MAX_CONDUCTANCE_S:g} S); {len(big)} such rows "
                "(microsiemens stored as siemens?)"
            )
        n_pulses = np.bincount(codes[self.polarity != 0], minlength=len(names))
        short = [d for d in range(len(names)) if n_pulses[d] < min_pulses]
        if short and not drop_short_devices:
            for d in short[: MAX_PROBLEMS - len(problems)]:
                first = int(np.nonzero(codes == d)[0][0])
                problems.append(
                    f"{self.source}:{self.where(first)}: device {names[d]!r} has {n_pulses[d]} pulse rows "
                    f"(polarity +1/-1), at least {min_pulses} are needed to fit it "
                    "(drop such devices with drop_short_devices / --drop-short-devices)"
                )
        if problems:
            raise MeasurementError(self.source, problems)
        if short:
            keep = ~np.isin(codes, short)
            out = self.subset(keep)
            out.exclusions.append(
                Exclusion(
                    rule=f"device with fewer than {min_pulses} pulse rows",
                    rows=int((~keep).sum()),
                    detail="devices " + ", ".join(names[d] for d in short),
                )
            )
            return out
        return self

    # ------------------------------------------------------------ output
    def to_csv_text(self, header: bool = True) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        cols = self.columns()
        if header:
            buf.write(header_comment(self.metadata))
            w.writerow(cols)
        for i in range(len(self)):
            w.writerow(self.row_values(i, cols))
        return buf.getvalue()

    def row_values(self, i: int, cols: Sequence[str]) -> list[str]:
        out: list[str] = []
        for c in cols:
            if c == "device":
                out.append(str(self.device[i]))
            elif c in ("cycle", "pulse", "polarity"):
                out.append(str(int(getattr(self, c)[i])))
            elif c == "conductance":
                out.append(repr(float(self.conductance[i])))
            elif c in self.optional:
                out.append(repr(float(self.optional[c][i])))
            else:
                out.append(str(self.extra[c][i]))
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the set as a schema CSV atomically (temporary file + rename)."""
        return atomic_write_text(path, self.to_csv_text())

    @staticmethod
    def concat(parts: Sequence[MeasurementSet], source: str = "<memory>") -> MeasurementSet:
        """Rows of several sets, one after another (optional columns must agree)."""
        if not parts:
            raise ValueError("MeasurementSet.concat: nothing to concatenate")
        opt = set(parts[0].optional)
        ext = set(parts[0].extra)
        for p in parts[1:]:
            if set(p.optional) != opt or set(p.extra) != ext:
                raise ValueError(f"MeasurementSet.concat: {p.source} has other optional columns than {parts[0].source}")
        out = MeasurementSet(
            device=np.concatenate([p.device for p in parts]),
            cycle=np.concatenate([p.cycle for p in parts]),
            pulse=np.concatenate([p.pulse for p in parts]),
            polarity=np.concatenate([p.polarity for p in parts]),
            conductance=np.concatenate([p.conductance for p in parts]),
            optional={k: np.concatenate([p.optional[k] for p in parts]) for k in opt},
            extra={k: np.concatenate([p.extra[k] for p in parts]) for k in ext},
            line=np.concatenate([p.line for p in parts]),
            source=source,
        )
        for p in parts:
            out.inputs += p.inputs
            out.exclusions += p.exclusions
            out.notes += [n for n in p.notes if n not in out.notes]
        return out


def header_comment(metadata: dict[str, str] | None = None) -> str:
    lines = [f"# schema: {SCHEMA_NAME}", f"# schema_version: {SCHEMA_VERSION}"]
    for k, v in (metadata or {}).items():
        if k in ("schema", "schema_version"):
            continue
        lines.append(f"# {k}: {str(v).replace(chr(10), ' ')}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- reading
def _parse_header(path: str, lines: list[str]) -> tuple[dict[str, str], int]:
    meta: dict[str, str] = {}
    k = 0
    while k < len(lines) and lines[k].startswith("#"):
        body = lines[k][1:].strip()
        if ":" in body:
            key, _, val = body.partition(":")
            meta[key.strip()] = val.strip()
        k += 1
    version = meta.get("schema_version", SCHEMA_VERSION)
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise MeasurementError(
            path,
            [f"{path}:line {1}: schema_version {version!r} is not readable by this release (expected {SCHEMA_VERSION})"],
        )
    return meta, k


def resolve_columns(path: str, header: list[str], line_no: int) -> tuple[str, float]:
    """Check a header row; return the conductance column and its factor to siemens."""
    problems: list[str] = []
    cols = [c.strip() for c in header]
    dup = sorted({c for c in cols if cols.count(c) > 1})
    if dup:
        problems.append(f"{path}:line {line_no}: duplicate column(s) {dup}")
    missing = [c for c in REQUIRED_COLUMNS if c not in cols]
    if missing:
        problems.append(
            f"{path}:line {line_no}: missing required column(s) {missing}; found {cols} "
            f"(required: {', '.join(REQUIRED_COLUMNS)} and one conductance column)"
        )
    gcols = [c for c in cols if c in CONDUCTANCE_COLUMNS]
    if len(gcols) != 1:
        problems.append(
            f"{path}:line {line_no}: expected exactly one conductance column of "
            f"{', '.join(CONDUCTANCE_COLUMNS)} (siemens, siemens, microsiemens), found {gcols or 'none'}"
        )
    known = set(REQUIRED_COLUMNS) | set(CONDUCTANCE_COLUMNS) | set(OPTIONAL_COLUMNS)
    unknown = [c for c in cols if c not in known and not c.startswith(EXTRA_PREFIX)]
    if unknown:
        problems.append(
            f"{path}:line {line_no}: unknown column(s) {unknown}: the schema has "
            f"{', '.join(sorted(known))}; prefix free columns with {EXTRA_PREFIX!r}"
        )
    if problems:
        raise MeasurementError(path, problems)
    return gcols[0], CONDUCTANCE_COLUMNS[gcols[0]]


def _to_float(text: str) -> float:
    return float(text.strip())


def _to_int(text: str) -> int:
    v = float(text.strip())
    if not math.isfinite(v) or v != int(v):
        raise ValueError("not an integer")
    return int(v)


def parse_rows(
    path: str,
    header: list[str],
    rows: Iterable[tuple[int, list[str]]],
) -> tuple[dict[str, list[Any]], list[int], list[str]]:
    """Parse data rows ``(line_no, fields)``; return columns, line numbers and problems."""
    cols = [c.strip() for c in header]
    data: dict[str, list[Any]] = {c: [] for c in cols}
    lines: list[int] = []
    problems: list[str] = []
    for line_no, fields in rows:
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(cols):
            problems.append(f"{path}:line {line_no}: expected {len(cols)} fields ({','.join(cols)}), found {len(fields)}")
            if len(problems) >= MAX_PROBLEMS:
                break
            continue
        ok = True
        parsed: list[Any] = []
        for c, f in zip(cols, fields, strict=True):
            try:
                if c == "device":
                    v: Any = f.strip()
                    if not v:
                        raise ValueError("empty device id")
                elif c in ("cycle", "pulse", "polarity"):
                    v = _to_int(f)
                    if c == "polarity" and v not in (-1, 0, 1):
                        raise ValueError(f"polarity must be -1, 0 or +1, found {v}")
                    if c in ("cycle", "pulse") and v < 0:
                        raise ValueError(f"{c} must be >= 0, found {v}")
                elif c.startswith(EXTRA_PREFIX):
                    v = f
                else:
                    v = _to_float(f)
                    if not math.isfinite(v):
                        raise ValueError(f"{c} is {f.strip()!r} (NaN/inf are not allowed)")
            except ValueError as exc:
                msg = str(exc)
                if msg.startswith("could not convert") or msg == "not an integer":
                    kind = "an integer" if c in ("cycle", "pulse", "polarity") else "a number"
                    msg = f"column {c!r} must be {kind}, found {f.strip()!r}"
                elif not msg.startswith(c) and "polarity" not in msg:
                    msg = f"column {c!r}: {msg}"
                problems.append(f"{path}:line {line_no}: {msg}")
                ok = False
                if len(problems) >= MAX_PROBLEMS:
                    break
                continue
            parsed.append(v)
        if len(problems) >= MAX_PROBLEMS:
            break
        if ok:
            for c, v in zip(cols, parsed, strict=True):
                data[c].append(v)
            lines.append(line_no)
    return data, lines, problems


def implausible_conductance(
    src: str, column: str, factor: float, values: np.ndarray, lines: Sequence[int] | np.ndarray
) -> None:
    """Refuse conductances of magnitude ``MAX_CONDUCTANCE_S`` or more (siemens after ``factor``):
    a device of 10 ohm or less is not a memory device, and such values are nearly always
    microsiemens in a siemens column.  The message names the first offending rows."""
    g = np.abs(values * factor)
    bad = np.nonzero(g >= MAX_CONDUCTANCE_S)[0]
    if not len(bad):
        return
    unit = "microsiemens" if factor == 1e-6 else "siemens"
    problems = []
    for i in bad[:5]:
        problems.append(
            f"{src}:line {int(lines[i])}: {column} {values[i]:g} ({unit}) = {g[i]:g} S is not a plausible "
            f"device conductance (>= {MAX_CONDUCTANCE_S:g} S, i.e. <= {1 / MAX_CONDUCTANCE_S:g} ohm)"
        )
    hint = (
        "if the values are microsiemens, name the column conductance_us"
        if factor == 1.0
        else "the values of a conductance_us column must be microsiemens"
    )
    problems.append(
        f"{src}: {len(bad)} of {len(values)} rows have |{column}| >= {MAX_CONDUCTANCE_S / factor:g} "
        f"({unit}); {hint}"
    )
    raise MeasurementError(src, problems)


def load_measurements(
    path: str | os.PathLike[str],
    *,
    min_pulses: int = MIN_PULSES_PER_DEVICE,
    drop_short_devices: bool = False,
) -> MeasurementSet:
    """Read a schema CSV (see :mod:`hil.calibration.schema`) and check it.

    Raises :class:`MeasurementError` (a ``ValueError``) naming file, line and problem.
    """
    p = Path(path)
    src = str(p)
    try:
        raw = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise MeasurementError(src, [f"{src}: cannot read: {exc}"]) from exc
    text_lines = raw.splitlines()
    meta, k = _parse_header(src, text_lines)
    if k >= len(text_lines):
        raise MeasurementError(src, [f"{src}:line {k + 1}: no header row (file is empty)"])
    reader = csv.reader(text_lines[k:])
    header = next(reader)
    gcol, factor = resolve_columns(src, header, k + 1)
    numbered = ((k + 2 + i, fields) for i, fields in enumerate(reader))
    data, lines, problems = parse_rows(src, header, numbered)
    if problems:
        raise MeasurementError(src, problems)
    if not lines:
        raise MeasurementError(src, [f"{src}:line {k + 2}: the file has a header but no data rows"])
    implausible_conductance(src, gcol, factor, np.array(data[gcol], dtype=np.float64), lines)
    cols = [c.strip() for c in header]
    ms = MeasurementSet(
        device=np.array(data["device"], dtype=object),
        cycle=np.array(data["cycle"]),
        pulse=np.array(data["pulse"]),
        polarity=np.array(data["polarity"]),
        conductance=np.array(data[gcol], dtype=np.float64) * factor,
        optional={c: np.array(data[c], dtype=np.float64) for c in cols if c in OPTIONAL_COLUMNS},
        extra={c: np.array(data[c], dtype=object) for c in cols if c.startswith(EXTRA_PREFIX)},
        line=np.array(lines),
        source=src,
        inputs=[{"path": src, "sha256": sha256_file(p)}],
        metadata={k2: v for k2, v in meta.items() if k2 not in ("schema", "schema_version")},
    )
    return ms.check(min_pulses=min_pulses, drop_short_devices=drop_short_devices)


# ---------------------------------------------------------------- incremental writing
class MeasurementWriter:
    """Append rows to a schema CSV as they are measured (flushed and synced per batch).

    A crash loses at most the batch being written; :func:`read_resume_state` reads
    back what is complete (a half-written last line is cut off).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        columns: Sequence[str],
        metadata: dict[str, str] | None = None,
        append: bool = False,
    ) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if append:
            self._fh = open(self.path, "a", newline="", encoding="utf-8")
        else:
            self._fh = open(self.path, "w", newline="", encoding="utf-8")
            self._fh.write(header_comment(metadata))
            csv.writer(self._fh, lineterminator="\n").writerow(self.columns)
            self._sync()
        self._w = csv.writer(self._fh, lineterminator="\n")
        self.rows_written = 0

    def write_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        for r in rows:
            self._w.writerow(r)
            self.rows_written += 1
        self._sync()

    def _sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._sync()
            self._fh.close()

    def __enter__(self) -> MeasurementWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def format_value(column: str, value: Any) -> str:
    """How the writer formats one value of ``column``."""
    if column in ("cycle", "pulse", "polarity"):
        return str(int(value))
    if column == "device" or column.startswith(EXTRA_PREFIX):
        return str(value)
    return repr(float(value))


def read_resume_state(path: str | os.PathLike[str], columns: Sequence[str]) -> int:
    """Complete data rows already in ``path`` (cutting off a half-written last line).

    Raises ``ValueError`` when the file's header differs from ``columns``.
    """
    p = Path(path)
    raw = p.read_bytes()
    if raw and not raw.endswith(b"\n"):
        cut = raw.rfind(b"\n") + 1
        with open(p, "r+b") as fh:
            fh.truncate(cut)
        raw = raw[:cut]
    lines = raw.decode("utf-8").splitlines()
    k = 0
    while k < len(lines) and lines[k].startswith("#"):
        k += 1
    if k >= len(lines):
        raise ValueError(f"{p}: cannot resume: no header row")
    header = next(csv.reader([lines[k]]))
    if header != list(columns):
        raise ValueError(f"{p}: cannot resume: the file has columns {header}, this run writes {list(columns)}")
    return sum(1 for ln in lines[k + 1 :] if ln.strip())
