"""Model extraction after TTv2 training on digits: last iterate vs. the average of iterates.

Four test accuracies, mean and std over 3 seeds (the 20-state noisy soft-bounds device
``rram-softbounds-20``, read noise 0.06):
(1) last iterate used in place on the analog arrays, (2) last iterate read to digital,
(3) the digital average of C's iterates over the last half of training, (4) that average
programmed by write-verify onto fresh ``pcm-noisy`` arrays.  Also printed: the analog
variant (average accumulated on a third array D per layer).

    python examples/extract_and_deploy.py --quick --json extraction.json

``--quick``: 15 epochs (the recommended TTv2 run, < 5 min on 2 cores); without: 30 epochs.
Threads: torch.set_num_threads(1).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from hil.extraction import KEYS, run_extraction_demo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="15 epochs instead of 30")
    ap.add_argument("--json", metavar="PATH", help="write the four-key JSON here")
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    details: list[dict] = []
    summary = run_extraction_demo(quick=args.quick, seeds=tuple(range(args.seeds)), json_path=args.json,
                                  details=details, progress=True)
    print(f"\n{'figure':<24} {'mean':>8} {'std':>8}")
    for k in KEYS:
        print(f"{k:<24} {100 * summary[k]['mean']:8.2f} {100 * summary[k]['std']:8.2f}")
    an = [r["average_analog_D"] for r in details]
    sd = statistics.stdev(an) if len(an) > 1 else 0.0
    print(f"{'(extra) average_analog_D':<24} {100 * statistics.fmean(an):8.2f} {100 * sd:8.2f}")
    gain = summary["average_digital"]["mean"] - summary["last_iterate_digital"]["mean"]
    spread = max(summary["average_digital"]["std"], summary["last_iterate_digital"]["std"])
    print(f"\naverage - last iterate (digital): {100 * gain:+.2f} points; largest seed std {100 * spread:.2f}")
    gap = summary["average_deployed"]["mean"] - summary["average_digital"]["mean"]
    print(f"deployed - digital average: {100 * gap:+.2f} points")
    for r in details:
        d = r["deploy"]
        print(f"seed {r['seed']}: snapshots {r['snapshots']}, deploy pulses {d['pulses_spent']}, "
              f"rms programming error {d['rms_error']:.4f}, reads of the last iterate "
              f"{[L['reads_averaged'] for L in r['extraction_last']['layers']]}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        print(f"wrote {args.json}: {json.dumps(summary)}")


if __name__ == "__main__":
    main()
