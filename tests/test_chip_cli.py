"""``hil emulator``: the emulated board on a loopback TCP port, driven by SerialCrossbar."""

from __future__ import annotations

import json
import re
import socket
import threading
from pathlib import Path

import torch
from click.testing import CliRunner

from hil.cli.main import cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_emulator_serves_a_board_and_writes_the_pulse_log(tmp_path: Path) -> None:
    from hil.backends import open_backend

    port = _free_port()
    log = tmp_path / "pulses.json"
    result: dict = {}

    def serve() -> None:
        result["r"] = CliRunner().invoke(
            cli,
            ["emulator", "--rows", "4", "--cols", "6", "--device", "ideal", "--port", str(port),
             "--duration", "1.5", "--fault", "drop_ack_rate=0.5", "--pulse-log", str(log)],
        )

    t = threading.Thread(target=serve)
    t.start()
    spec = f"serial+socket://127.0.0.1:{port}#limits=board"
    for _ in range(100):  # wait for the server to listen
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.05).close()
            break
        except OSError:
            t.join(0.02)
    with open_backend(spec, rows=2, cols=3) as xb:
        xb.arm()
        for _ in range(4):
            xb.pulse(torch.ones(2, 3, dtype=torch.int64))
    t.join(5)
    r = result["r"]
    assert r.exit_code == 0, r.output
    assert re.search(rf"spec: serial\+socket://127\.0\.0\.1:{port}#limits=board", r.output)
    data = json.loads(log.read_text())
    assert len(data["pulse_log"]) == 4  # dropped acks did not cause a second execution
    assert all(e["n_up"] == 6 and e["cmd"] == "PULSE_BATCH" for e in data["pulse_log"])
    assert data["stats"].get("fault_drop_ack", 0) >= 1


def test_emulator_rejects_unknown_fault_keys() -> None:
    r = CliRunner().invoke(cli, ["emulator", "--duration", "0.1", "--fault", "explode=1"])
    assert r.exit_code != 0 and "KEY=VALUE" in r.output
