"""Base class for every configuration and file format of crossbar-hil.

Every model is a pydantic model that round-trips through JSON and carries a
``schema_version`` so that files written by one release are recognised (or
refused with a clear message) by another.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, field_validator

T = TypeVar("T", bound="HilModel")


class HilModel(BaseModel):
    """Strict pydantic base: unknown keys are an error, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    def to_json(self, indent: int | None = 2) -> str:
        return self.model_dump_json(indent=indent)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.model_validate_json(text)


class VersionedFile(HilModel):
    """A model that is written to disk on its own: it has a ``schema_version``.

    Subclasses set ``SCHEMA_VERSION``; reading a file with another major version
    fails with a message that names the file, the version found and the one
    expected.
    """

    SCHEMA_VERSION: ClassVar[str] = "1.0"
    schema_version: str = "1.0"

    @field_validator("schema_version")
    @classmethod
    def _check_version(cls, v: str) -> str:
        want = cls.SCHEMA_VERSION.split(".")[0]
        if v.split(".")[0] != want:
            raise ValueError(
                f"{cls.__name__}: schema_version {v!r} is not readable by this release "
                f"(expected major version {want}, i.e. {cls.SCHEMA_VERSION})"
            )
        return v

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write as JSON atomically (temporary file + rename): a crash never leaves half a file."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls: type[T], path: str | os.PathLike[str]) -> T:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read {cls.__name__} file {path}: {exc}") from exc
        try:
            return cls.model_validate_json(text)
        except Exception as exc:  # pydantic.ValidationError or JSON error
            raise ValueError(f"{path}: not a valid {cls.__name__} file:\n{exc}") from exc


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[Any]], None], binary: bool = False) -> Path:
    """Write a file through a temporary file in the same folder, fsync and a rename.

    ``write(fh)`` fills the open temporary file (text mode, or bytes with ``binary``); a
    crash or an exception leaves any previous file at ``path`` untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda fh: fh.write(text))


def dump_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write plain JSON data (a dict of measured figures) atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
