"""Linear probe: logistic regression on frozen, normalised image features.

The features are the image tower's pooled features before the projector (the backbone's
width, not the text space), as the reference evaluates it (``visual_only=True``).
The split is fixed by manifest order: the first ``train_per_class`` images of each class
train, the rest test, so every run scores the same images.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from evaluations.datasets import ClassificationSet
from evaluations.metrics import classification_metrics
from evaluations.tasks.base import TaskOutput
from flame.errors import FlameError


def fixed_split(labels: list[int], train_per_class: int) -> tuple[list[int], list[int]]:
    seen: dict[int, int] = {}
    train, test = [], []
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        (train if seen[label] <= train_per_class else test).append(i)
    return train, test


def evaluate_linear_probe(data: ClassificationSet, image_features: torch.Tensor, train_per_class: int = 3, c: float = 1.0,
                          seed: int = 0) -> TaskOutput:
    """``image_features``: the images' backbone features (the task's ``image_features`` in ``evaluations.tasks.TASKS``)."""
    train, test = fixed_split(data.labels, train_per_class)
    if not test:
        raise FlameError(f"{data.name}: no test images left with {train_per_class} training images per class")
    if len({data.labels[i] for i in train}) < 2:
        raise FlameError(f"{data.name}: the linear probe needs at least 2 classes")
    features = image_features.numpy()
    labels = np.asarray(data.labels)
    clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    clf.fit(features[train], labels[train])
    # Scored over the classes the probe was trained on (predict_proba's columns), so the
    # chance level is 1/(classes seen); every test image's class has training images.
    column = {label: i for i, label in enumerate(clf.classes_)}
    targets = np.asarray([column[label] for label in labels[test]])
    metrics = classification_metrics(torch.from_numpy(clf.predict_proba(features[test])), targets, prefix="lp_")
    details = {"n_train": len(train), "n_test": len(test), "n_classes": len(clf.classes_), "C": c,
               "feature_dim": int(features.shape[1])}
    return TaskOutput(metrics, details)

