"""Run `infer_problems` on a saved problems dataset in every process of a `torchrun` launch.

Usage: torchrun --nproc_per_node N infer_problems_worker.py DATASET_DIR OUTPUT.parquet BATCH_SIZE

The main process writes the results to OUTPUT.parquet; every process writes OUTPUT.rank<R>.json with the number of
processes, the distributed type and the number of model calls it made.
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from kmeans_transformer import KMeansTransformerConfig, KMeansTransformerModel
from kmeans_transformer.problems import infer_problems, load_problems, write_problem_results


def main(dataset_dir: str, output: str, batch_size: str) -> None:
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    config = KMeansTransformerConfig(num_clusters=3, point_dim=2, num_iterations=5)
    model = KMeansTransformerModel(config).double()
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append(output.labels.shape[0]))
    dataset = load_problems(dataset_dir)
    results = infer_problems(model, dataset, batch_size=int(batch_size), accelerator=accelerator, progress=False)
    write_problem_results(results, output)
    record = {
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "batches": len(calls),
        "problems": sum(calls),
        "returned": results is not None,
    }
    Path(f"{output}.rank{accelerator.process_index}.json").write_text(json.dumps(record))
    # leave together, after tearing down the process group, so no process exits while another still talks to it
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(*sys.argv[1:])
