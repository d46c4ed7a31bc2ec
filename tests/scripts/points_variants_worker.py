"""Run `cluster_points` for several variants in every process of a `torchrun` launch.

Usage: torchrun --nproc_per_node N points_variants_worker.py POINTS.parquet OUTPUT_DIR CASES.json

CASES.json is a list of runs, each `{"name", "variant", "parameters", "state", "weighted", "source", "k", "T",
"chunk_size"}` and optionally `"centroids"`: a float64 model of `variant` with `parameters`, the starting `state`
(lists), the stored fitted `centroids` (a list of k rows; default: the first k rows), the weight column `w` if
`weighted`, read from the path (`"source": "path"`, contiguous blocks of rows) or as a streaming `IterableDataset`
(`"stream"`, every N-th row). Labels go to OUTPUT_DIR/labels_<name>; the main process writes OUTPUT_DIR/<name>.npz.
"""

import json
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import torch
from accelerate import Accelerator

from kmeans_transformer import KMeansTransformerConfig, KMeansTransformerModel
from kmeans_transformer.points import cluster_points


def main(points: str, output: str, cases: str) -> None:
    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    accelerator = Accelerator(cpu=True)
    output = Path(output)
    columns = [name for name in pq.ParquetFile(points).schema_arrow.names if name != "w"]
    for case in json.loads(Path(cases).read_text()):
        config = KMeansTransformerConfig(
            num_clusters=case["k"], point_dim=len(columns), num_iterations=case["T"], variant=case["variant"],
            fitted_centroids="centroids" in case, **case["parameters"],
        )
        model = KMeansTransformerModel(config).double().eval()
        if "centroids" in case:
            model.embeddings.fitted_centroids.data = torch.tensor(case["centroids"], dtype=torch.float64)
        dataset = points
        if case["source"] == "stream":
            dataset = datasets.load_dataset("parquet", data_files=points, split="train", streaming=True)
        state = {name: torch.tensor(value, dtype=torch.float64) for name, value in case["state"].items()}
        result = cluster_points(
            model, dataset, columns=columns, chunk_size=case["chunk_size"], accelerator=accelerator, progress=False,
            labels_output=output / f"labels_{case['name']}", initial_state=state or None,
            weight_column="w" if case["weighted"] else None,
        )
        if accelerator.is_main_process:
            np.savez(
                output / f"{case['name']}.npz", centroids=result.centroids, inertia=result.inertia,
                cluster_sizes=result.cluster_sizes, **{f"state_{name}": value for name, value in result.state.items()},
            )


if __name__ == "__main__":
    main(*sys.argv[1:])
