"""Run `cluster_points` on a Parquet file in every process of a `torchrun` launch.

Usage: torchrun --nproc_per_node N infer_points_worker.py POINTS.parquet OUTPUT_DIR K T CHUNK_SIZE

Every process clusters the file twice, from the path (contiguous blocks of rows) and from a streaming
`IterableDataset` (every N-th row), writing labels to OUTPUT_DIR/labels_path and OUTPUT_DIR/labels_stream. The main
process writes the two results to OUTPUT_DIR/result_path.npz and OUTPUT_DIR/result_stream.npz; every process writes
OUTPUT_DIR/rank<R>.json with the number of processes and the distributed type.
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


def main(points: str, output: str, k: str, iterations: str, chunk_size: str) -> None:
    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    accelerator = Accelerator(cpu=True)
    output = Path(output)
    point_dim = len(pq.ParquetFile(points).schema_arrow.names)
    config = KMeansTransformerConfig(num_clusters=int(k), point_dim=point_dim, num_iterations=int(iterations))
    model = KMeansTransformerModel(config).double().eval()
    stream = datasets.load_dataset("parquet", data_files=points, split="train", streaming=True)
    for name, dataset in (("path", points), ("stream", stream)):
        result = cluster_points(
            model, dataset, chunk_size=int(chunk_size), accelerator=accelerator, progress=False,
            labels_output=output / f"labels_{name}",
        )
        if accelerator.is_main_process:
            np.savez(
                output / f"result_{name}.npz", centroids=result.centroids, inertia=result.inertia,
                cluster_sizes=result.cluster_sizes, num_points=result.num_points,
            )
    record = {"num_processes": accelerator.num_processes, "distributed_type": str(accelerator.distributed_type)}
    (output / f"rank{accelerator.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(*sys.argv[1:])
