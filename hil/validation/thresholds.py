"""Default pass/fail thresholds of ``hil validate``, each with the reason it has its value.

A statistic passes when its value is at most ``margin + allowance``:

- the **margin** is the difference we accept as "the simulator matches": it is
  a property of the use (training with TTv2, MVM inference), fixed here and
  documented with its reason in :data:`THRESHOLD_REASONS` and docs/validation.md;
- the **allowance** is the sampling error of the comparison itself, measured on
  the two files from their **replication units** (devices, else cycles: never
  single steps, which share their cycle's trajectory and run-to-run conditions):
  the Student-t quantile at the false-failure rate of ``z`` normal standard
  errors, for the degrees of freedom the units give, times the standard error of
  the difference; or the 99th percentile of a null that permutes whole units, for
  the Kolmogorov-Smirnov statistic.  A difference that two samples of one
  population show by chance is not evidence against the simulator.  It shrinks
  as more cycles and devices are measured, so that a large measurement resolves
  small differences and a small one says honestly that it cannot; a file with a
  single unit (one cycle of one device) cannot estimate it at all, and the
  statistics are then *insufficient*, not passed.

Margins were chosen from the use and from the detection target (a 20 % change of
cycle-to-cycle noise or of the up/down asymmetry must fail with the default
protocol), before any comparison was run; they are not fitted to make a data
set pass.
"""

from __future__ import annotations

from pydantic import Field

from hil.config import HilModel

THRESHOLD_REASONS: dict[str, str] = {
    "trajectory_nrmse": (
        "5 % of the conductance range is one state of a 20-state device, the regime TTv2 is "
        "designed for (Gokmen 2021): a mean trajectory that stays within one such state of the "
        "measured one moves the weights the same way pulse for pulse."
    ),
    "step_mean": (
        "10 %: half of the 20 % up/down-asymmetry change the validation must detect, leaving the "
        "other half for sampling error; it is also the precision calibration is asked to reach "
        "on every fitted parameter (round-trip within 10 %)."
    ),
    "step_spread": (
        "10 %: half of the 20 % change of cycle-to-cycle noise the validation must detect; the "
        "within-device step spread is where c2c noise shows."
    ),
    "step_distribution": (
        "Kolmogorov-Smirnov D of 0.10: no quantile of the step distribution in any state bin is "
        "displaced by more than 10 percentile points; for a Gaussian that is a shift of a quarter "
        "of its std, i.e. finer than the mean and spread margins for a noisy device, so D fails "
        "only on a difference of shape (skew, tails, bimodality) that mean and spread miss."
    ),
    "asymmetry": (
        "10 % (|ln ratio| <= ln 1.1) in the ratio of mean up to mean down step at the same "
        "states: half of the 20 % asymmetry change the validation must detect; a single "
        "scalar, so it resolves a uniform change better than the per-bin step curves."
    ),
    "n_states": (
        "10 % (|ln ratio| <= ln 1.1): TTv2 studies vary the number of states by factors of 2 or "
        "more (10, 20, 50, 1000); 10 % is far inside one such step."
    ),
    "symmetry_point": (
        "5 % of the conductance range, one state of a 20-state device: TTv2's zero-shifting "
        "references A to its symmetry point, and an offset below one state is below what a "
        "single pulse can correct."
    ),
    "d2d": (
        "0.05 absolute in the coefficient of variation across devices: one sixth of the 30 % "
        "spread typical of fitted RRAM presets (aihwkit's default d2d); with few devices the "
        "sampling allowance dominates and the report shows it."
    ),
    "read_noise": (
        "15 % relative: read noise enters every MVM output linearly and TTv2 tolerates ~10x "
        "more of it than SGD, so 15 % does not change a training conclusion; it stays below "
        "the 20 % resolution asked of the other noise statistic (c2c)."
    ),
    "z": (
        "3 standard errors: about 0.3 % false failures per statistic under Gaussian sampling, "
        "so that with ~13 statistics identical models pass in at least 19 of 20 comparisons."
    ),
    "small_sample": (
        "Student-t quantile (at the same 0.27 % two-sided rate) for the degrees of freedom of the "
        "replication units, Welch-Satterthwaite for the two files: a standard error estimated from G "
        "units is itself uncertain, and z = 3 with few units fails identical models far more often "
        "than 0.27 % (t/z is 1.005 for 256 devices per file, 1.02 for 64, 1.43 for 5 + 5 units)."
    ),
    "ks_null_quantile": (
        "99th percentile of the permutation null of max-over-bins D (permuting whole devices, or "
        "cycles, between the files): steps of one unit stay together, so their dependence is kept."
    ),
    "min_units": (
        "5 devices per file to resample devices (a bootstrap over fewer has too few distinct "
        "replicates); with fewer, the cycles are the units (bootstrap from 5, delete-one jackknife "
        "for 2-4); one cycle of one device is a single unit: insufficient replication."
    ),
}


class ValidationThresholds(HilModel):
    """Margins and sampling settings of the statistical comparison (see :data:`THRESHOLD_REASONS`)."""

    trajectory_nrmse: float = Field(
        0.05, ge=0, description="RMS difference of the mean conductance trajectories / reference range"
    )
    step_mean: float = Field(
        0.10, ge=0, description="RMS over state bins of the mean-step difference / mean |step| of the reference"
    )
    step_spread: float = Field(
        0.10, ge=0, description="RMS over state bins of the within-device step-std difference / mean std of the reference"
    )
    step_distribution: float = Field(
        0.10, ge=0, le=1, description="largest Kolmogorov-Smirnov D over state bins"
    )
    asymmetry: float = Field(
        0.0953, ge=0, description="|ln(A candidate / A reference)|, A = mean |up| / mean |down| step (0.0953 = ln 1.1)"
    )
    n_states: float = Field(
        0.0953, ge=0, description="|ln(n_states candidate / n_states reference)| (0.0953 = ln 1.1)"
    )
    symmetry_point: float = Field(
        0.05, ge=0, description="|symmetry point difference| / reference range"
    )
    d2d: float = Field(
        0.05, ge=0, description="|difference of the device-to-device coefficients of variation|"
    )
    read_noise: float = Field(
        0.15, ge=0, description="|read-noise std difference| / reference read-noise std"
    )
    z: float = Field(
        3.0, ge=0, description="standard errors of sampling allowance (sets the false-failure rate per statistic)"
    )
    small_sample: bool = Field(
        True, description="Student-t quantile for the replication units' degrees of freedom instead of z"
    )
    ks_null_quantile: float = Field(0.99, gt=0, lt=1, description="quantile of the KS permutation null")
    n_bins: int = Field(8, ge=2, le=64, description="state bins over the reference conductance range")
    min_bin_steps: int = Field(
        20, ge=2, description="steps a state bin needs in both files to be compared"
    )
    min_devices_d2d: int = Field(
        3, ge=2, description="devices each file needs for the device-to-device statistics"
    )
    min_read_dof: int = Field(
        10, ge=1, description="degrees of freedom of repeated reads each file needs for read noise"
    )
    min_units: int = Field(
        5, ge=2,
        description="devices a file needs to be resampled by device (else its cycles are the units), and "
        "units for a bootstrap (2 to min_units - 1 units: jackknife; one unit: insufficient replication)",
    )
    n_bootstrap: int = Field(200, ge=20, description="bootstrap replicates per file")
    n_permutations: int = Field(200, ge=20, description="permutations of the KS null")
    key_presence: float = Field(
        0.5, gt=0, le=1,
        description="fraction of a file's cycles a trajectory position must appear in to be compared",
    )
    min_key_overlap: float = Field(
        0.5, gt=0, le=1,
        description="fraction of the reference's trajectory positions the candidate must share "
        "(else the files are not of one protocol: unusable input)",
    )
