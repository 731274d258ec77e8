"""Small bundled data sets for examples, tests and benchmarks (no downloads).

scikit-learn's ``load_digits`` (1797 8x8 images, 10 classes) stands in for MNIST.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Split:
    """Train/test tensors: ``x_*`` float32 ``[n, 64]`` in [0, 1], ``y_*`` int64 ``[n]``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def images(self) -> Split:
        """The same split with inputs shaped ``[n, 1, 8, 8]`` for convolutional networks."""
        return Split(
            self.x_train.view(-1, 1, 8, 8), self.y_train, self.x_test.view(-1, 1, 8, 8), self.y_test
        )


def load_digits_split(test_size: float = 0.25, random_state: int = 0) -> Split:
    """Digits, inputs divided by 16, 75/25 split (sklearn train_test_split) with ``random_state`` 0 by default.

    This is the split of the reference figures in the issues (aihwkit runs used the same).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = data.data.astype("float32") / 16.0
    y = data.target.astype("int64")
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, random_state=random_state
    )
    return Split(torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te))
