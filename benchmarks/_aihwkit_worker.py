"""Measure IBM aihwkit's AnalogTile, run by benchmarks/update_throughput.py in aihwkit's interpreter.

This script imports only torch and aihwkit (never crossbar-hil), so it runs in a
separate environment that has aihwkit installed (``--aihwkit-python PATH``).

Two modes:

- ``python _aihwkit_worker.py --size 256 --batch 64 [--what update|forward]``: one
  measurement, printed as one JSON object.
- ``python _aihwkit_worker.py --serve``: read one JSON request per line on stdin
  (``{"size": 256, "batch": 64, "what": "update", "device": "cpu", "min_time": 1.0}``),
  answer one JSON line per request on stdout.  Tiles are built once per
  (size, batch, device) and reused, so that measurements can be interleaved
  with ours without re-importing aihwkit.  ``{"op": "info"}`` returns versions.

Configuration (kept equal to ours in update_throughput.py): ConstantStepDevice with
dw_min 0.001, weights in [-1, 1] and aihwkit's default device noise (dw_min_std 0.3
cycle-to-cycle, 30 % device-to-device spread of dw_min and the bounds); fixed bit
length 31 with update management (``update_bl_management`` off, as our pulse trains
always use BL slots); default forward IO (7-bit DAC, 9-bit ADC, out_bound 12,
out_noise 0.06) with noise and bound management off (our periphery has neither).
Learning rate 0.01; x ~ U[0, 1], d ~ U[-0.5, 0.5].
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

LR = 0.01
DW_MIN = 0.001
BL = 31


def make_tile(size: int, device: str):
    from aihwkit.simulator.configs import SingleRPUConfig
    from aihwkit.simulator.configs.devices import ConstantStepDevice
    from aihwkit.simulator.parameters.enums import BoundManagementType, NoiseManagementType
    from aihwkit.simulator.tiles import AnalogTile

    cfg = SingleRPUConfig(device=ConstantStepDevice(dw_min=DW_MIN, w_min=-1.0, w_max=1.0))
    cfg.update.desired_bl = BL
    cfg.update.update_bl_management = False
    cfg.update.update_management = True
    cfg.forward.noise_management = NoiseManagementType.NONE
    cfg.forward.bound_management = BoundManagementType.NONE
    tile = AnalogTile(size, size, cfg)
    g = torch.Generator().manual_seed(0)
    tile.set_weights(torch.rand(size, size, generator=g) * 0.2 - 0.1)
    tile.set_learning_rate(LR)
    if device != "cpu":
        tile = tile.cuda()
    return tile


def _sync(device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize()


def measure(tile, size: int, batch: int, what: str, device: str, min_time: float) -> dict:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, size, generator=g).to(device)
    d = (torch.rand(batch, size, generator=g) - 0.5).to(device)

    def call() -> None:
        if what == "update":
            tile.update(x, d)
        else:
            tile.forward(x)

    call()  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    call()
    _sync(device)
    single = max(time.perf_counter() - t0, 1e-7)
    n = max(1, int(min_time / single))
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        call()
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"calls": n, "seconds": seconds, "calls_per_s": n / seconds}


def info() -> dict:
    import aihwkit

    return {
        "aihwkit": aihwkit.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }


def serve() -> None:
    tiles: dict = {}
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        try:
            if req.get("op") == "info":
                out = info()
            else:
                size, batch = int(req["size"]), int(req["batch"])
                device = req.get("device", "cpu")
                key = (size, device)
                if key not in tiles:
                    tiles[key] = make_tile(size, device)
                out = measure(tiles[key], size, batch, req.get("what", "update"), device,
                              float(req.get("min_time", 1.0)))
        except Exception as exc:  # report, keep serving
            out = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", action="store_true", help="answer JSON requests on stdin")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--what", choices=["update", "forward"], default="update")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--min-time", type=float, default=1.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.serve:
        serve()
        return
    tile = make_tile(args.size, args.device)
    out = measure(tile, args.size, args.batch, args.what, args.device, args.min_time)
    out.update(info())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
