"""``TrainingConfig``: every hyperparameter of the training controller, with its unit and default.

The table in docs/training.md is this class in prose; keep the two in step.
Units: *normalized weight* is the unit of the arrays (``w_min .. w_max``);
*unit gradient* is one unit of ``x * d`` (input times back-propagated error),
so a rate in "normalized weight per unit gradient" is a learning rate.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from hil.config import HilModel

Algorithm = Literal["analog_sgd", "tt", "ttv2", "cttv2"]
ALGORITHMS: tuple[str, ...] = ("analog_sgd", "tt", "ttv2", "cttv2")


class TrainingConfig(HilModel):
    """Hyperparameters of :class:`hil.training.TrainingController` and :func:`hil.training.fit`."""

    algorithm: Algorithm = Field(
        "ttv2",
        description="analog_sgd: W on one array; tt: Tiki-Taka v1 (W = gamma A + C, pulsed "
        "transfer); ttv2: Tiki-Taka v2 (digital filter H, thresholded pulses on C); cttv2: "
        "chopped TTv2",
    )
    # --- learning rates -------------------------------------------------------------------
    lr: float = Field(
        0.1,
        gt=0,
        description="analog_sgd: rate of W.update(x, d, lr) [normalized weight per unit "
        "gradient]; all algorithms: default rate of the digital parameters (biases)",
    )
    bias_lr: float | None = Field(
        None, gt=0, description="rate of the digital parameters (biases); None: lr [1/unit gradient]"
    )
    lambda_A: float = Field(
        0.1,
        gt=0,
        description="rate of the pulsed gradient update of A, A.update(x, d, rate); in the unit "
        "set by lambda_A_unit [normalized weight per unit gradient, or dw_min(A) per unit "
        "gradient]",
    )
    lambda_A_unit: Literal["weight", "pulses"] = Field(
        "weight",
        description="unit of lambda_A: 'weight': normalized weight per unit gradient (rate = "
        "lambda_A); 'pulses': dw_min(A) per unit gradient, the mean number of pulses a unit "
        "gradient fires on a device of A (rate = lambda_A * dw_min(A)), so A gets the same "
        "pulse counts, and meets the same bit-length limit, on a device of any granularity",
    )
    # --- transfer A -> C (tt, ttv2, cttv2) ---------------------------------------------------
    n_s: int = Field(
        1,
        ge=1,
        description="training samples between two transfers (per layer) [samples]; "
        "a transfer reads `transfer_columns` columns of A",
    )
    transfer_columns: int = Field(1, ge=1, description="columns of A read per transfer [columns]")
    n_reads: int = Field(
        1, ge=1, description="reads averaged per column read of A (one MVM each) [reads]"
    )
    lambda_H: float = Field(
        0.1,
        gt=0,
        description="ttv2/cttv2: gain of a read into H, H[:, k] += lambda_H * (A - R)[:, k] "
        "[dimensionless]",
    )
    threshold: float = Field(
        1.0,
        gt=0,
        description="ttv2/cttv2: |H| that fires one pulse on C [units of C's dw_min]",
    )
    max_pulses: int | None = Field(
        1,
        ge=1,
        description="ttv2/cttv2: most pulses one device of C gets per transfer [pulses]; None: "
        "no cap in pulses (see max_step)",
    )
    max_step: float | None = Field(
        None,
        gt=0,
        description="ttv2/cttv2: most change of one device of C per transfer [normalized "
        "weight]; converted to a pulse cap max(1, floor(max_step / dw_min(C))) (the smaller of "
        "it and max_pulses applies); None: only max_pulses",
    )
    h_reset: Literal["zero", "decrement", "clip", "measured"] = Field(
        "decrement",
        description="ttv2/cttv2: after firing n pulses, H is set to 0 (zero), reduced by "
        "n * threshold (decrement), reduced and then clipped to +-threshold (clip: what a "
        "pulse cap kept from firing is dropped, so H cannot wind up), or reduced by the change "
        "of C read back after the pulses (measured: one extra column read of C per transfer "
        "that fired; each pulsed device's H drops by what it moved since its last read, so "
        "C's cycle-to-cycle noise is corrected by later pulses instead of adding up)",
    )
    threshold_noise: float | None = Field(
        None,
        gt=0,
        description="ttv2/cttv2 with h_reset 'measured': the dead band follows C's measured "
        "pulse noise, threshold_eff = max(threshold, threshold_noise * s) [dimensionless], s "
        "the std of one pulse's change of C in units of C's dw_min, estimated per layer from "
        "the read-backs (their spread on the pulsed devices less that on the unpulsed ones); "
        "None: threshold alone",
    )
    gamma: float = Field(
        0.0,
        ge=0,
        description="weight of A in the network's weights, W = gamma * A + C [dimensionless]",
    )
    transfer_lr: float = Field(
        0.1,
        gt=0,
        description="tt: rate of the pulsed transfer C.update(e_k, -(A - R) e_k, transfer_lr) "
        "[normalized weight per normalized weight read]",
    )
    in_chop_prob: float = Field(
        0.1,
        ge=0,
        le=1,
        description="cttv2: probability that an input line's chopper sign flips after its "
        "column is read [probability per read]; see in_chop_states",
    )
    in_chop_states: float | None = Field(
        None,
        gt=0,
        description="cttv2: if set, in_chop_prob is the flip probability for an A of this many "
        "states, and an A of (w_max - w_min) / dw_min states uses in_chop_prob * in_chop_states "
        "* dw_min / (w_max - w_min) (at most 1) [states]: with lambda_A in pulses, A's memory, "
        "in reads, grows with its number of states, and the chopper period must stay longer",
    )
    # --- schedule ----------------------------------------------------------------------------
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant",
        description="decay of the rates that move the weights (analog_sgd: lr; tt: "
        "transfer_lr; ttv2/cttv2: lambda_H; all: the digital rate) over the planned training "
        "samples, from 1 to final_lr_fraction; lambda_A is not decayed",
    )
    final_lr_fraction: float = Field(
        0.1, ge=0, le=1, description="rate factor at the end of a decaying schedule [dimensionless]"
    )
    # --- arrays ----------------------------------------------------------------------------
    bl: int = Field(
        31,
        ge=1,
        description="bit length of the stochastic pulse trains [pulse slots per sample]; "
        "applied by the array factory (hil.training.simulated_factory), a driver sets its own",
    )
    zero_shift_cycles: int | None = Field(
        None,
        ge=0,
        description="alternating up/down pulse pairs that drive A to its symmetry point before "
        "training [cycles]; None: ceil(1.5 * (w_max - w_min) / dw_min) of A",
    )
    zero_shift_reads: int = Field(
        10,
        ge=1,
        description="up/down pairs at the end of zero-shifting after each of which A is read; "
        "R is the mean of these 2 x zero_shift_reads reads [pairs]",
    )
    reset_weights: bool = Field(
        True,
        description="drive the weight array (W or C) to its symmetry point too before the "
        "random initialization",
    )
    init_scale: float = Field(
        1.0,
        ge=0,
        description="random initial weights ~ U(-s, s), s = init_scale / sqrt(fan_in), written "
        "as pulse counts round(w / dw_min) [dimensionless]",
    )
    # --- loop ------------------------------------------------------------------------------
    epochs: int = Field(15, ge=1, description="passes over the training set (hil.training.fit)")
    batch_size: int = Field(10, ge=1, description="samples per step [samples]")
    seed: int = Field(
        0,
        description="seeds the controller's generator (init pulses, chopper flips) and the "
        "data order of hil.training.fit",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainingConfig:
        if self.algorithm == "analog_sgd" and self.gamma != 0.0:
            raise ValueError("gamma applies to the Tiki-Taka family; analog_sgd has one array")
        if self.threshold_noise is not None and self.h_reset != "measured":
            raise ValueError(
                "threshold_noise needs h_reset='measured': C's pulse noise is estimated from "
                "the read-backs of C"
            )
        if self.algorithm == "analog_sgd" and self.lambda_A_unit != "weight":
            raise ValueError(
                "lambda_A_unit applies to the Tiki-Taka family; analog_sgd's rate is lr "
                "(normalized weight per unit gradient)"
            )
        return self

    @property
    def uses_transfer(self) -> bool:
        return self.algorithm != "analog_sgd"

    @property
    def chopped(self) -> bool:
        return self.algorithm == "cttv2"

    @property
    def digital_lr(self) -> float:
        return self.bias_lr if self.bias_lr is not None else self.lr
