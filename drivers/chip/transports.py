"""Byte transports for :class:`~hil.drivers.chip.emulator.ChipEmulator`.

- in process: the ``xbarsim://`` pyserial URL (:mod:`hil.drivers.chip.protocol_xbarsim`);
- :class:`EmulatorTcpServer`: a loopback TCP server (``socket://127.0.0.1:PORT`` on the
  driver side; also what ``hil emulator`` runs);
- :class:`EmulatorPtyServer`: a pseudo-terminal pair; the driver opens the slave path
  as an ordinary serial port.

All of them only move bytes; faults (delays, drops, corruption, disconnects)
happen in the emulator, so every transport sees the same firmware.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
import tty
from collections.abc import Callable

import torch

from hil.drivers.chip.emulator import ChipEmulator, EmulatorDisconnected


def _same_threads(n: int) -> None:
    """Give the server thread the torch thread count of the thread that created the server.

    OpenMP settings are per thread: without this a server thread would run the
    emulator's small matmuls on every core, which on a loaded machine stalls
    each reply by tens of milliseconds.
    """
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _pump(
    emu: ChipEmulator,
    fd_ready: Callable[[float], bool],
    recv: Callable[[], bytes],
    send: Callable[[bytes], None],
    stop: threading.Event,
) -> str:
    """Serve one connection until ``stop``, EOF or an emulated disconnect.  Returns why it ended."""
    while not stop.is_set():
        nxt = emu.next_due()
        wait = 0.05 if nxt is None else max(0.0, min(0.05, nxt - time.monotonic()))
        if fd_ready(wait):
            try:
                data = recv()
            except OSError:
                return "eof"
            if not data:
                return "eof"
            try:
                emu.receive(data)
            except EmulatorDisconnected:
                return "disconnect"
        if emu.disconnected:
            return "disconnect"
        out = emu.pop_due()
        if out:
            try:
                send(out)
            except OSError:
                return "eof"
    return "stopped"


class EmulatorTcpServer:
    """Serve one emulator on a loopback TCP port, one client at a time, in a daemon thread.

    ``port=0`` picks a free port; :attr:`url` is the pyserial URL for the driver
    (``socket://127.0.0.1:PORT``).  An emulated disconnect closes the client
    socket; the next client that connects finds the array as it was (disarmed).
    """

    def __init__(self, emulator: ChipEmulator, host: str = "127.0.0.1", port: int = 0) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the emulator serves on loopback only, got host {host!r}")
        self.emulator = emulator
        self._sock = socket.create_server((host, port))
        self._sock.settimeout(0.1)
        self.host, self.port = self._sock.getsockname()[:2]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"xbarsim-tcp-{self.port}", daemon=True)
        self.connections = 0
        self.endings: list[str] = []
        self._threads = torch.get_num_threads()

    @property
    def url(self) -> str:
        return f"socket://{self.host}:{self.port}"

    def start(self) -> EmulatorTcpServer:
        self._thread.start()
        return self

    def _serve(self) -> None:
        _same_threads(self._threads)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.emulator.reconnect()
            with conn:
                why = _pump(
                    self.emulator,
                    lambda t, c=conn: bool(select.select([c], [], [], t)[0]),
                    lambda c=conn: c.recv(65536),
                    lambda data, c=conn: c.sendall(data),
                    self._stop,
                )
                self.endings.append(why)
                if why == "disconnect":
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.close()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def __enter__(self) -> EmulatorTcpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class EmulatorPtyServer:
    """Serve one emulator on a pseudo-terminal pair: the driver opens :attr:`url` (the slave path).

    Both ends are put in raw mode so that no byte is translated.  An emulated
    disconnect closes the master end: the driver's next read or write fails.
    """

    def __init__(self, emulator: ChipEmulator) -> None:
        self.emulator = emulator
        self.master, self._slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self._slave)
        self.url = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="xbarsim-pty", daemon=True)
        self.ending = ""
        self._threads = torch.get_num_threads()

    def start(self) -> EmulatorPtyServer:
        self._thread.start()
        return self

    def _serve(self) -> None:
        _same_threads(self._threads)
        fd = self.master
        self.ending = _pump(
            self.emulator,
            lambda t: bool(select.select([fd], [], [], t)[0]),
            lambda: os.read(fd, 65536),
            lambda data: _write_all(fd, data),
            self._stop,
        )
        if self.ending == "disconnect":
            self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.master = self._slave = -1

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        self._close_fds()

    def __enter__(self) -> EmulatorPtyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
