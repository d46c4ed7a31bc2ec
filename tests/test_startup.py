"""Start-up: the console command parses before importing torch or transformers; the package defers its modeling code."""

import subprocess
import sys

import pytest

from kmeans_transformer.cli import command_line_options
from kmeans_transformer.command_options import OPTIONS


def test_command_options_snapshot_matches_the_registries():
    """The parser's snapshot equals what the registries give now (else: python scripts/write_command_options.py)."""
    assert OPTIONS == command_line_options(), "run `python scripts/write_command_options.py`"


CONSOLE = """
import sys
import kmeans_transformer_cli
sys.argv = ["kmeans-transformer", *{arguments!r}]
try:
    code = kmeans_transformer_cli.main()
except SystemExit as exit:
    code = exit.code
print("RESULT", code, sorted({{"torch", "transformers", "kmeans_transformer.modeling_kmeans_transformer"}} & set(sys.modules)))
"""


def console(*arguments: str) -> tuple[str, str]:
    result = subprocess.run([sys.executable, "-c", CONSOLE.format(arguments=list(arguments))], capture_output=True,
                            text=True, timeout=300)
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    return line, result.stdout + result.stderr


@pytest.mark.parametrize("arguments", [
    ["--help"], ["zoo", "--help"], ["cluster", "--help"], ["evaluate", "--help"],
])
def test_console_help_imports_neither_torch_nor_transformers(arguments):
    line, output = console(*arguments)
    assert line == "RESULT 0 []"
    assert "usage: kmeans-transformer" in output


@pytest.mark.parametrize("arguments, message", [
    (["cluster"], "the following arguments are required"),
    (["zoo", "--output", "z", "--variants", "nope"], "unknown variant"),
    (["convert", "--variant", "nope"], "invalid choice"),
])
def test_console_argument_errors_import_neither_torch_nor_transformers(arguments, message):
    line, output = console(*arguments)
    assert line == "RESULT 2 []"
    assert message in output and "Traceback" not in output


def test_console_runs_the_command_after_the_package_import(tmp_path):
    """After parsing, the package's __init__ runs (Auto registration) and the command writes a loadable checkpoint."""
    line, output = console("convert", "--n-clusters", "2", "--point-dim", "2", "--num-iterations", "1",
                           "--output", str(tmp_path / "model"))
    assert line.startswith("RESULT 0 "), output
    code = (f"import sys; import kmeans_transformer; from transformers import AutoModel\n"
            f"assert 'transformers.modeling_utils' not in sys.modules\n"
            f"model = AutoModel.from_pretrained({str(tmp_path / 'model')!r})\n"
            f"print(type(model).__module__, type(model).__name__, type(model).checkpoint_saving is not None)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.split() == ["kmeans_transformer.modeling_kmeans_transformer", "KMeansTransformerModel", "True"], result.stderr


def test_package_import_defers_the_modeling_code():
    """`import kmeans_transformer` registers the Auto classes without transformers.modeling_utils; the models and the
    estimator come on first access, with the package's hooks attached whichever way the module is reached."""
    code = (
        "import sys; import kmeans_transformer as kt; from transformers import AutoConfig, AutoModel\n"
        "print('modeling_utils' , 'transformers.modeling_utils' in sys.modules)\n"
        "print('config', type(AutoConfig.for_model('kmeans_transformer')).__name__)\n"
        "from kmeans_transformer.modeling_kmeans_transformer import KMeansTransformerModel\n"
        "print('hooks', KMeansTransformerModel.checkpoint_saving is not None, KMeansTransformerModel._auto_class)\n"
        "model = AutoModel.from_config(kt.AttentionClusteringConfig())\n"
        "print('learning', type(model).__name__, kt.CardedModelMixin.card_writer is not None)\n"
        "print('estimator', kt.KMeans.__module__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.splitlines() == [
        "modeling_utils False", "config KMeansTransformerConfig", "hooks True AutoModel",
        "learning AttentionClusteringModel True", "estimator kmeans_transformer.estimator",
    ], result.stderr
