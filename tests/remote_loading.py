"""Loading a checkpoint with `trust_remote_code=True` in a fresh interpreter that never imports the package."""

import os
import subprocess
import sys
import textwrap

import numpy as np


def remote_outputs(directory, inputs: dict, call: str, tmp_path) -> np.ndarray:
    """Load `directory` with `AutoModel.from_pretrained(..., trust_remote_code=True)` in a subprocess, run
    `model(**inputs)` (NumPy arrays, passed as float64 tensors), evaluate `call` on the output (an expression in
    `out`) and return it as a NumPy array. Fails if the subprocess imports `kmeans_transformer`."""
    np.savez(tmp_path / "remote_inputs.npz", **inputs)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(directory)!r}, trust_remote_code=True)
        assert "kmeans_transformer" not in sys.modules, "the package must not be imported"
        inputs = {{key: torch.tensor(value) for key, value in np.load({str(tmp_path / "remote_inputs.npz")!r}).items()}}
        with torch.no_grad():
            out = model(**inputs)
        np.save({str(tmp_path / "remote_output.npy")!r}, ({call}).detach().numpy())
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env)
    return np.load(tmp_path / "remote_output.npy")
