"""Load a Hub checkpoint with `trust_remote_code` (without importing kmeans_transformer) and save its outputs.

    python hub_pull_worker.py REPO_ID POINTS.npy CENTROIDS.npy OUT.npz

Run by the Hub tests in a fresh process whose HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE say where to load from.
"""

import sys

import numpy as np
import torch
from transformers import AutoModel


def main(repo_id: str, points_path: str, centroids_path: str, output_path: str) -> None:
    model = AutoModel.from_pretrained(repo_id, trust_remote_code=True)
    points = torch.from_numpy(np.load(points_path)).to(model.dtype)
    centroids = torch.from_numpy(np.load(centroids_path)).to(model.dtype)
    with torch.no_grad():
        output = model(points, centroids=centroids)
    np.savez(
        output_path,
        labels=output.labels.numpy(),
        centroids=output.centroids.numpy(),
        inertia=output.inertia.numpy(),
        module=np.array(type(model).__module__),
        imported_package=np.array("kmeans_transformer" in sys.modules),
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
