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
from evaluations.embedding import BACKBONE, embed_images
from evaluations.metrics import classification_metrics
from evaluations.tasks import TaskOutput
from flame.errors import FlameError

IMAGE_FEATURES = BACKBONE


def fixed_split(labels: list[int], train_per_class: int) -> tuple[list[int], list[int]]:
    seen: dict[int, int] = {}
    train, test = [], []
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        (train if seen[label] <= train_per_class else test).append(i)
    return train, test


def evaluate_linear_probe(model, data: ClassificationSet, train_per_class: int = 3, c: float = 1.0, batch_size: int = 64, seed: int = 0,
                          image_emb: torch.Tensor | None = None) -> TaskOutput:
    """``image_emb``: the images' ``IMAGE_FEATURES`` when already embedded."""
    train, test = fixed_split(data.labels, train_per_class)
    if not test:
        raise FlameError(f"{data.name}: no test images left with {train_per_class} training images per class")
    if len({data.labels[i] for i in train}) < 2:
        raise FlameError(f"{data.name}: the linear probe needs at least 2 classes")
    if image_emb is None:
        image_emb = embed_images(model, data.images, batch_size, desc=f"{data.name}: images", features=IMAGE_FEATURES)
    features = image_emb.numpy()
    labels = np.asarray(data.labels)
    clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    clf.fit(features[train], labels[train])
    # Scored over the classes the probe was trained on (predict_proba's columns), so the
    # chance level is 1/(classes seen); every test image's class has training images.
    column = {label: i for i, label in enumerate(clf.classes_)}
    targets = np.asarray([column[label] for label in labels[test]])
    metrics = classification_metrics(torch.from_numpy(clf.predict_proba(features[test])), targets, prefix="lp_")
    details = {"n_train": len(train), "n_test": len(test), "n_classes": len(clf.classes_), "C": c,
               "image_features": IMAGE_FEATURES, "feature_dim": int(features.shape[1])}
    return TaskOutput(metrics, details)

