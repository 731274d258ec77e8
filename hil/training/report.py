"""``TrainingReport``: what one ``hil train`` run did, as a versioned JSON file."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from hil.config import VersionedFile


class TrainingReport(VersionedFile):
    """One training run of the digits network on a backend (``hil train --json PATH``).

    Accuracies are fractions of the test set (0..1); ``seconds`` is the wall time of the
    training loop of this invocation (a resumed run counts only its own part).
    """

    SCHEMA_VERSION = "1.1"
    kind: Literal["training_run"] = "training_run"
    backend: str = Field(description="the backend spec trained on")
    arrays: list[dict[str, Any]] = Field(
        default_factory=list, description="per array: layer, role, backend info (name, rows, cols, hardware_id)"
    )
    network: Literal["mlp", "cnn"]
    algorithm: str
    config: dict[str, Any] = Field(description="the TrainingConfig used (JSON)")
    finished: bool = Field(description="False: stopped early (signal or --stop-after-steps), checkpoint written")
    stopped_by: str | None = Field(None, description="SIGINT, SIGTERM or stop_after_steps when not finished")
    checkpoint: str | None = None
    resumed_from_step: int | None = None
    resume_drift: list[dict[str, Any]] = Field(
        default_factory=list, description="per hardware array on resume: how far it moved since the checkpoint"
    )
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    test_accuracy: float | None = Field(None, description="after the last epoch, through the arrays (finished runs)")
    history: list[dict[str, float]] = Field(default_factory=list, description="per epoch: train_loss, test_accuracy")
    cost: dict[str, Any] = Field(default_factory=dict, description="TrainingController.hardware_cost()")
    c_pulse_noise: dict[str, float] = Field(
        default_factory=dict,
        description="per layer: C's cycle-to-cycle pulse noise measured by the read-backs "
        "(h_reset measured), std of one pulse in units of C's dw_min; "
        "TrainingController.c_pulse_noise() (added in schema 1.1)",
    )
