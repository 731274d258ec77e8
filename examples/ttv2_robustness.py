"""TTv2 robustness on digits: floating-point SGD, analog SGD, Tiki-Taka, TTv2 and c-TTv2.

Three axes, one at a time from the base point (20 states, c2c 1.0, read noise 0.06), on a
simulated soft-bounds device with 30 % device-to-device spread:

- number of device states: 10, 20, 50, 1000
- cycle-to-cycle update noise, std relative to the step: 0.1, 1, 3, 10
- additive output (read) noise of every MVM: 0, 0.02, 0.06, 0.2

15 epochs, batch 10, 3 seeds per point; hyperparameters tuned once at the base point on
a validation split (docs/training.md).  The study itself is hil.training.robustness.

    python examples/ttv2_robustness.py --quick --json quick.json    # < 5 min on 2 cores
    python examples/ttv2_robustness.py --json full.json             # the full grid (slow)
    python examples/ttv2_robustness.py --networks cnn --base-only   # the CNN at the base point
    python examples/ttv2_robustness.py --quick --preset noise       # TTv2 noise preset

JSON: {"fp_sgd": <accuracy>, "results": [{"algorithm": "analog_sgd"|"tt"|"ttv2"|"cttv2",
"states", "c2c", "read_noise", "accuracy_mean", "accuracy_std"}, ...]} for the MLP; the CNN
under "cnn" with the same structure; "meta" holds the settings and every run.
"""

from __future__ import annotations

import argparse
import sys

from hil.config import dump_json
from hil.training.robustness import run_robustness


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="MLP only: all algorithms at the base point, analog SGD, TTv2 and c-TTv2 along c2c")
    p.add_argument("--json", default=None, help="write the table as JSON here")
    p.add_argument("--networks", default=None,
                   help="comma list of mlp, cnn (default: mlp with --quick, else mlp,cnn)")
    p.add_argument("--base-only", action="store_true",
                   help="every algorithm at the base point only (e.g. the CNN: --networks cnn --base-only)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--jobs", type=int, default=2, help="worker processes (1 torch thread each)")
    p.add_argument("--preset", default=None,
                   help="settings preset of hil.training.digits.PRESETS (e.g. noise) instead of the "
                        "recommended ones, for the algorithms it covers")
    args = p.parse_args(argv)
    report = run_robustness(
        quick=args.quick,
        networks=args.networks.split(",") if args.networks else None,
        seeds=args.seeds,
        epochs=args.epochs,
        jobs=args.jobs,
        base_only=args.base_only,
        preset=args.preset,
        command="python examples/ttv2_robustness.py " + " ".join(argv),
    )
    print(f"total {report['meta']['seconds']:.0f} s")
    if args.json:
        dump_json(args.json, report)
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
