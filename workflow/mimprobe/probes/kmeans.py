"""k-means with k = number of classes: how well the features cluster by class, with no labels at all.

Features are standardised with the train mean/std and L2-normalised; k-means (sklearn, seeded,
`n_init` restarts) is fitted on all of train and assigns the test images; test scores are ACC
(clusters matched one-to-one to classes by the Hungarian algorithm), NMI, AMI and ARI with
bootstrap CIs over `report.bootstrap` resamples, like every family. No hyper-parameters, so no
validation scores.

Head format: {mean (D,), std (D,), centroids (k, D)}; cluster = nearest centroid to normalise((x - mean) / std).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .common import ProbeOutcome, Splits, standardizer

DEFAULTS = {"n_init": 3, "max_iter": 100}


def fit(splits: Splits, params: dict, seed: int) -> ProbeOutcome:
    from sklearn.cluster import KMeans

    params = DEFAULTS | params
    mean, std = standardizer(splits.train_all.x)

    def prepare(x):
        return F.normalize((torch.as_tensor(x, dtype=torch.float32) - mean) / std, dim=1).numpy()

    kmeans = KMeans(splits.num_classes, n_init=params["n_init"], max_iter=params["max_iter"],
                    random_state=seed).fit(prepare(splits.train_all.x))
    clusters = kmeans.predict(prepare(splits.test.x))
    head = {"mean": mean, "std": std, "centroids": torch.as_tensor(kmeans.cluster_centers_)}
    return ProbeOutcome(f"k={splits.num_classes}", {"k": splits.num_classes}, {}, None, head,
                        test_clusters=np.asarray(clusters, dtype=np.int64))
