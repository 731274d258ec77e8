"""Model extraction after TTv2 training on digits: last iterate vs. the average of iterates.

Four test accuracies, mean and std over 3 seeds (the 20-state noisy soft-bounds device
``rram-softbounds-20``, read noise 0.06, TTv2 at constant rates as in the seed paper):
(1) last iterate used in place on the analog arrays, (2) last iterate read to digital,
(3) the digital average of C's iterates over the last half of training, (4) that average
programmed by write-verify onto fresh ``pcm-noisy`` arrays (differential pairs).  Also
printed: the paired per-seed differences, and the same figures for the recommended TTv2
settings (cosine decay of the transfer rate to 0: a better last iterate, which leaves the
average little to add), with the analog variant (average accumulated on a third array D per
layer, on the training device and on the same device without cycle-to-cycle noise);
``--no-cosine`` skips that second setting.  The JSON holds the constant-rate figures at the
top level and the cosine-schedule ones under ``"cosine_schedule"``.

    python examples/extract_and_deploy.py --quick --json extraction.json

``--quick``: 15 epochs (the recommended TTv2 run, < 5 min on 2 cores); without: 30 epochs.
Threads: torch.set_num_threads(1).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from hil.extraction import KEYS, run_extraction_demo
from hil.extraction.demo import ANALOG_KEYS, DEPLOY_PROGRAMMINGS


def _table(title: str, summary: dict[str, Any]) -> None:
    print(f"\n{title}\n{'figure':<28} {'mean':>8} {'std':>8}")
    for k in (*KEYS, *ANALOG_KEYS):
        if k in summary:
            print(f"{k:<28} {100 * summary[k]['mean']:8.2f} {100 * summary[k]['std']:8.2f}")
    g, d = summary["average_minus_last_digital"], summary["deployed_minus_average"]
    print(f"average - last iterate (digital), paired: {100 * g['mean']:+.2f} ± {100 * g['std']:.2f} points "
          f"(std of (2) {100 * summary['last_iterate_digital']['std']:.2f}, of (3) {100 * summary['average_digital']['std']:.2f})")
    print(f"deployed - digital average, paired:       {100 * d['mean']:+.2f} ± {100 * d['std']:.2f} points "
          "(per seed: mean over its programmings)")
    dep = summary["deployment"]
    a = dep["gap_all"]
    seeds = ", ".join(f"{100 * p['gap_mean']:+.2f}" for p in dep["per_seed"])
    print(f"  {dep['device']}, {dep['programmings']} programmings per seed: per seed "
          f"{seeds}; all programmings "
          f"{100 * a['mean']:+.2f} ± {100 * a['std']:.2f} (min {100 * a['min']:+.2f}, max {100 * a['max']:+.2f}), "
          f"std within a model {100 * dep['std_within_model']:.2f}")


def _study(args: argparse.Namespace, t0: float) -> None:
    from hil.extraction.study import run_deployment_study

    out = run_deployment_study(quick=args.quick, seeds=tuple(range(args.seeds)), programmings=args.programmings,
                               progress=True)
    print(f"\ndeployment study on {out['device']}: constant-rate TTv2, {out['epochs']} epochs, "
          f"{len(out['models'])} seeds x {out['programmings']} programmings; gap = deployed - digital average")
    print(f"{'variant':<18} {'gap mean ± std':>15} {'min':>6} {'worst seed':>10} {'rms err (eff)':>14} "
          f"{'max err / layer':>16} {'far off':>8} {'1 layer':>13} {'pulses':>7} {'reads':>6} {'CPU s':>6}")
    for name, row in out["variants"].items():
        g = row["gap"]
        rms = f"{row['rms_error'][0]:.4f}-{row['rms_error'][1]:.4f}" if row["rms_error"] else "-"
        mx = "/".join(f"{x:.3f}" for x in row["layer_max_error"]) if row["layer_max_error"] else "-"
        far = "/".join(str(x) for x in row["far_off"]) if row["far_off"] else "-"
        one = "/".join(f"{100 * x:+.2f}" for x in row["layer_only_worst_gap"]) if row["layer_only_worst_gap"] else "-"
        print(f"{name:<18} {100 * g['mean']:+7.2f} ± {100 * g['std']:4.2f} {100 * g['min']:+6.2f} "
              f"{100 * min(row['seed_gaps']):+10.2f} {rms:>14} {mx:>16} {far:>8} {one:>13} {row['pulses'] / 1000:6.0f}k "
              f"{row['reads'] / 1000:5.1f}k {row['cpu_seconds']:6.1f}")
    print("max err / layer: largest |read - target| per layer over all runs (effective weight units); far off: "
          "weights more than 0.1 off target in the arrays' units, summed over all runs, per layer; 1 layer: worst "
          "gap of the digital model with only that layer's programmed weights (read back), per layer")
    for name, row in out["variants"].items():
        print(f"  {name}: {row['description']}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.study_json:
        Path(args.study_json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.study_json}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="15 epochs instead of 30")
    ap.add_argument("--json", metavar="PATH", help="write the summary JSON here")
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    ap.add_argument("--no-cosine", action="store_true", help="skip the cosine-schedule (recommended settings) comparison")
    ap.add_argument("--programmings", type=int, default=DEPLOY_PROGRAMMINGS,
                    help=f"independent programmings (fresh arrays) per trained model (default {DEPLOY_PROGRAMMINGS})")
    ap.add_argument("--forward-reads", type=int, default=1,
                    help="MVMs averaged per input by the deployed model (default 1; k costs k x the inference reads)")
    ap.add_argument("--deploy-study", action="store_true",
                    help="instead of the figures: the deployment study (write-verify, mapping, calibration variants)")
    ap.add_argument("--study-json", metavar="PATH", help="with --deploy-study: write the study JSON here")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.deploy_study:
        _study(args, t0)
        return
    details: list[dict] = []
    summary = run_extraction_demo(quick=args.quick, seeds=tuple(range(args.seeds)), json_path=args.json,
                                  details=details, progress=True, cosine=not args.no_cosine,
                                  programmings=args.programmings, forward_reads=args.forward_reads)
    _table("constant-rate TTv2 (the seed paper's protocol; schedule='constant')", summary)
    if "cosine_schedule" in summary:
        _table("recommended TTv2 (cosine decay of the transfer rate to 0, otherwise the same)",
               summary["cosine_schedule"])
    for r in details:
        ds = r["deploy"]
        print(f"{r['setting']} seed {r['seed']}: snapshots {r['snapshots']}, rms(average - last) "
              f"{[round(x, 3) for x in r['rms_average_minus_last']]} (C units); reads of the last iterate "
              f"{[L['reads_averaged'] for L in r['extraction_last']['layers']]}")
        for p, d in enumerate(ds):
            print(f"    programming {p}: accuracy {100 * r['average_deployed_each'][p]:.2f} "
                  f"({100 * (r['average_deployed_each'][p] - r['average_digital']):+.2f}), pulses {d['pulses_spent']}, "
                  f"rms programming error {d['rms_error_normalized']:.4f} normalized / {d['rms_error']:.4f} effective, "
                  f"max {max(L['max_error'] for L in d['layers']):.3f} effective")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        print(f"wrote {args.json}: {json.dumps({k: summary[k] for k in KEYS})}")


if __name__ == "__main__":
    main()
