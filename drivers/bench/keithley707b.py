"""Keithley 707B / 708B switching matrix (TSP command set): routes array lines to the instruments.

Command strings checked against *Models 707B and 708B Switching Matrix
Reference Manual*, document 707B-901-01 Rev. B (January 2015), Section 7
"TSP command reference":

=================================  ===============================================================
``channel.close(list)``            closes the listed channels, leaves others as they are (p. 7-17)
``channel.exclusiveclose(list)``   closes the listed channels and opens every other one (p. 7-22)
``channel.open(list)``             opens channels; ``"allslots"`` opens every channel (p. 7-33)
``channel.getclose(list)``         closed channels as ``"1A01;1C05"``; ``nil`` when none is closed
``errorqueue.clear()`` / ``errorqueue.next()``  the TSP error queue (same model as the 2600B)
=================================  ===============================================================

and the channel specifier of Section 5 "Remote commands" / 2 "Switch
operation": slot digit, row letter, two-digit column, e.g. ``"1A01"`` is slot
1, row A, column 01 (matrix cards such as the 7174A have rows A-H and columns
01-12).  ``channel.close``/``exclusiveclose`` refuse ``"slotX"``/``"allslots"``;
only ``channel.open`` accepts them.  ``*IDN?`` is sent as an IEEE 488.2 common
command (the evidence that a 707B answers it is listed below).

Verification of the command strings (which source confirmed what):

- read in the manual text (707B-901-01 Rev. B, and Rev. A where noted):
  ``channel.close()`` (p. 7-17: appends to the closed channels; ``slotX`` or
  ``allslots`` is an error; ``print(channel.getclose("slot1"))`` answers
  ``1A01;1A02;...``), ``channel.exclusiveclose()`` (p. 7-22: opens every
  channel not listed; ``slotX``/``allslots`` is an error), ``channel.open()``
  (p. 7-33), ``channel.getclose()`` (Rev. A p. 7-27: semicolon-delimited,
  ``nil`` when nothing is closed, ``print(channel.getclose("allslots"))`` in
  its example), ``errorqueue.next()`` (Rev. A p. 7-86: code, message,
  severity, node), the channel specifier (p. 2-81: slot digit, row letter,
  two-digit column, e.g. ``1A05``, ``3C12``; channel lists are quoted strings,
  comma-separated), and the reply termination (p. 5-27: the instrument always
  ends its output with a line feed);
- ``channel.open("allslots")``: the 707B pages read show ``allslots`` only
  inside ``channel.open(channel.getclose("allslots"))``; the shared TSP channel
  library's 3700A manual shows ``channel.open("allslots")`` verbatim, and the
  hephy-dd ``comet`` driver for the 707B (``src/comet/driver/keithley/k707b.py``)
  sends exactly that string;
- ``*IDN?``: still not found in the 707B manual text (searched again: the pages
  read document ``print(slot[N].idn)`` for the card in a slot, p. 5-27, and the
  707A/708A compatibility commands, Appendix B, but no common-command page).
  Evidence that a 707B answers it: the TSP firmware family documents it (2600B
  reference manual Rev. F Section 11, p. 11-3), and open-source drivers that
  talk to real 707Bs send it: hephy-dd ``comet`` (its ``K707B`` derives from
  its IEC 60488 base and identifies with ``*IDN?``), hephy-dd
  ``diode-measurement`` (``K707BAdapter.identify``), SweepMe! 707B driver.  A
  707B that did not answer would fail at open with a clear timeout naming
  ``*IDN?``, before anything is switched.

Wiring convention of this project: matrix **rows** (A-H) are the instrument
side (SMU HI, pulse generator output, ground), matrix **columns** are the DUT
side (one per array word line / bit line).  Hot switching wears relays: the
bench backend switches only while the sources are off or at 0 V.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from hil.drivers.bench.instrument import InstrumentError, TSPInstrument
from hil.safety import SafetyError, SafetyGuard, SafetyLimits

ROWS = "ABCDEFGH"
MAX_COLUMN = 12
MAX_SLOT = 6
_CHANNEL = re.compile(r"^([1-6])([A-H])(\d{2})$")
_CHANNEL_OP = re.compile(r'channel\.(exclusiveclose|close|open)\("([^"]*)"\)')


def channel_name(slot: int, row: str, column: int) -> str:
    """The 707B channel specifier ``"<slot><row><column:02d>"``, validated (``ValueError`` otherwise)."""
    if isinstance(slot, bool) or not isinstance(slot, int) or not 1 <= slot <= MAX_SLOT:
        raise ValueError(f"matrix slot must be an integer 1..{MAX_SLOT}, got {slot!r}")
    if not isinstance(row, str) or len(row) != 1 or row not in ROWS:
        raise ValueError(f"matrix row must be one letter of {ROWS}, got {row!r}")
    if isinstance(column, bool) or not isinstance(column, int) or not 1 <= column <= MAX_COLUMN:
        raise ValueError(f"matrix column must be an integer 1..{MAX_COLUMN}, got {column!r}")
    return f"{slot}{row}{column:02d}"


class Keithley707B(TSPInstrument):
    """A Keithley 707B (6 slots) or 708B (1 slot) switching matrix.

    Parameters
    ----------
    slot:
        The card slot used (1..6; 1 on a 708B).
    max_closed:
        Largest number of crosspoints one close operation may leave closed
        (a guard against routing an instrument to many lines by mistake);
        ``None``: no limit.

    Channel lists are validated before sending: a malformed specifier, a channel
    on another slot, two instrument rows on one column (instruments shorted
    together through a DUT line), or more than ``max_closed`` channels is
    refused with :class:`~hil.safety.SafetyError` and nothing is sent.
    """

    MODEL = "keithley707b"

    def __init__(
        self,
        resource: Any,
        *,
        limits: SafetyLimits,
        slot: int = 1,
        name: str | None = "matrix",
        guard: SafetyGuard | None = None,
        max_closed: int | None = None,
    ) -> None:
        super().__init__(resource, limits=limits, name=name, guard=guard)
        channel_name(slot, "A", 1)  # validates the slot
        self.slot = slot
        if max_closed is not None and int(max_closed) < 1:
            raise ValueError(f"{self.name}: max_closed must be >= 1 or None, got {max_closed}")
        self.max_closed = None if max_closed is None else int(max_closed)

    def context(self) -> dict[str, Any]:
        return {"slot": self.slot}

    def channel(self, row: str, column: int) -> str:
        """Channel specifier of ``row`` (A-H) x ``column`` (1..12) on this slot."""
        return channel_name(self.slot, row, column)

    def _channel_list(self, channels: Iterable[str], what: str) -> str:
        items = list(channels)
        if not items:
            raise SafetyError(f"{self.name}: {what}: empty channel list; nothing was sent")
        for ch in items:
            m = _CHANNEL.match(ch) if isinstance(ch, str) else None
            if m is None or not 1 <= int(m.group(3)) <= MAX_COLUMN:
                raise SafetyError(f"{self.name}: {what}: {ch!r} is not a channel specifier like '1A01'; nothing was sent")
            if int(m.group(1)) != self.slot:
                raise SafetyError(
                    f"{self.name}: {what}: channel {ch} is on slot {m.group(1)}, this matrix uses slot {self.slot}; "
                    "nothing was sent"
                )
        if len(set(items)) != len(items):
            raise SafetyError(f"{self.name}: {what}: duplicate channels in {items}; nothing was sent")
        rows_of: dict[str, set[str]] = {}
        for ch in items:
            rows_of.setdefault(ch[2:], set()).add(ch[1])
        shared = {col: sorted(rows) for col, rows in rows_of.items() if len(rows) > 1}
        if shared:
            raise SafetyError(
                f"{self.name}: {what}: column(s) {sorted(shared)} would connect several instrument rows "
                f"{shared} to one line (instruments shorted together); nothing was sent"
            )
        if self.max_closed is not None and len(items) > self.max_closed:
            raise SafetyError(
                f"{self.name}: {what}: {len(items)} crosspoints requested, at most {self.max_closed} may be "
                "closed at once; nothing was sent"
            )
        return ",".join(items)

    # -------------------------------------------------------------- dry run
    def dry_run_note(self, command: str) -> None:
        """Dry run: track the relays the recorded ``channel.*`` calls would leave closed."""
        closed = set(filter(None, self.dry_values.get("closed", "").split(";")))
        for op, arg in _CHANNEL_OP.findall(command):
            items = {c.strip() for c in arg.split(",") if c.strip()}
            if op == "exclusiveclose":
                closed = items
            elif op == "close":
                closed |= items
            elif items == {"allslots"}:
                closed = set()
            else:
                closed -= items
        self.dry_values["closed"] = ";".join(sorted(closed))

    def _dry_reply(self, command: str) -> str | None:
        """Empty error queue; ``channel.getclose`` answers the relays the recorded calls left closed."""
        queue = super()._dry_reply(command)
        if queue is not None:
            return queue
        if command.endswith('print(channel.getclose("allslots"))'):
            return self.dry_values.get("closed") or "nil"
        return None

    def open_all(self) -> None:
        """``channel.open("allslots")``: every relay open (the matrix's safe state; no reply awaited)."""
        self.write('channel.open("allslots")')

    def open_all_verified(self) -> None:
        """Open every relay and confirm: ``channel.open("allslots") print(channel.getclose("allslots"))``.

        The reply (``nil``) comes after the relays have opened; anything else is an
        :class:`InstrumentError`.
        """
        command = 'channel.open("allslots") print(channel.getclose("allslots"))'
        closed = self._parse_closed(self.query(command), command)
        if closed:
            raise InstrumentError(self.name, command, f"relays still closed after opening all: {closed}")

    def route(self, channels: Iterable[str]) -> None:
        """Exactly ``channels`` closed, all others open, confirmed by the instrument.

        Sends ``channel.exclusiveclose("<list>") print(channel.getclose("allslots"))``
        as one message: the instrument closes the channels (settling time
        included) and then answers with the channels actually closed, which must
        equal the request (:class:`InstrumentError` otherwise).  The reply also
        tells the host the switching is complete before the next instrument acts.
        """
        items = self._channel_list(channels, "route")
        command = f'channel.exclusiveclose("{items}") print(channel.getclose("allslots"))'
        closed = self._parse_closed(self.query(command), command)
        if set(closed) != set(items.split(",")):
            raise InstrumentError(
                self.name, command, f"routing read back {sorted(closed)} differs from the request {items.split(',')}"
            )

    def open_channels(self, channels: Iterable[str]) -> None:
        """``channel.open("<list>")``."""
        self.write(f'channel.open("{self._channel_list(channels, "open")}")')

    def close_channels(self, channels: Iterable[str]) -> None:
        """``channel.close("<list>")``: closes the listed channels, others stay as they are."""
        self.write(f'channel.close("{self._channel_list(channels, "close")}")')

    def exclusive_close(self, channels: Iterable[str]) -> None:
        """``channel.exclusiveclose("<list>")``: exactly the listed channels closed, all others open."""
        self.write(f'channel.exclusiveclose("{self._channel_list(channels, "exclusive close")}")')

    def closed_channels(self) -> list[str]:
        """``print(channel.getclose("allslots"))`` -> the closed channels (``[]`` for ``nil``)."""
        command = 'print(channel.getclose("allslots"))'
        return self._parse_closed(self.query(command), command)

    def _parse_closed(self, reply: str, command: str) -> list[str]:
        reply = reply.strip()
        if reply in ("nil", ""):
            return []
        items = [c.strip() for c in reply.replace(",", ";").split(";") if c.strip()]
        for c in items:
            if _CHANNEL.match(c) is None:
                raise InstrumentError(self.name, command, f"unexpected reply {reply!r}")
        return items
