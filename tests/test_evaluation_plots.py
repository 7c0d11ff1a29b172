"""The evaluation plots as a reader of the MLflow UI sees them: the ROC curve's axes name the
positive class, and the training curves count whole epochs."""

from __future__ import annotations

import numpy as np

from pipelines import evaluation


def test_the_roc_axes_name_the_positive_class_and_the_curves_count_whole_epochs():
    rng = np.random.default_rng(0)
    scores = rng.random(40)
    truth = (scores + rng.normal(0, 0.3, 40) > 0.5).astype(int)
    roc = evaluation.roc_curve_figure(np.column_stack([1 - scores, scores]), truth,
                                      ("neg", "pos")).axes[0]
    assert (roc.get_xlabel(), roc.get_ylabel()) == ("False positive rate (positive: pos)",
                                                    "True positive rate (positive: pos)")
    curves = evaluation.training_curves_figure({
        "loss": [1.0, 0.8, 0.7], "val_loss": [1.0, 0.9, 0.8],
        "accuracy": [0.5, 0.6, 0.7], "val_accuracy": [0.5, 0.55, 0.6]})
    for axes in curves.axes:  # 3 epochs: ticks 1, 2, 3, not 1.25 or 2.75
        ticks = [tick for tick in axes.get_xticks() if 1 <= tick <= 3]
        assert ticks == [1, 2, 3], ticks
