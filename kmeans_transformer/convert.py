"""Write analytic checkpoints: build the model of a variant, check it against the reference, save safetensors and a card.

A checkpoint directory holds `config.json`, `model.safetensors` (no pickle), the configuration and modeling code for
`trust_remote_code=True` (with the package modules they import), and a `README.md` model card that records the
validation the weights passed. The validation is `validation.validate_against_reference`, the card
`cards.render_model_card`.

A checkpoint appears complete or not at all: it is written into a temporary sibling directory and moved into place
when complete (`files.replacing_directory`), so an interrupted or failed write (Ctrl-C, a full disk) leaves no
directory, or the previous checkpoint as it was. `overwrite` replaces a previous checkpoint whole, once the new one is
complete: none of its files survive. A non-empty directory holding anything that is not a checkpoint's file is
refused even with `overwrite`, since replacing it would delete files this package did not write.

Every `save_pretrained` of the package (the models' and the estimator's) follows transformers' semantics instead
([`saving_checkpoint`]): it writes into an existing directory, file by file.
"""

import re
import warnings
from pathlib import Path

from transformers.dynamic_module_utils import get_relative_import_files

from . import in_context, modeling_kmeans_transformer
from .cards import is_package_card, render_model_card
from .configuration_kmeans_transformer import KMeansTransformerConfig
from .files import replacing_directory, writing_into_directory
from .modeling_kmeans_transformer import DTYPES, KMeansTransformerModel
from .validation import ValidationError, ValidationReport, validate_against_reference


# The files of a checkpoint, by name. A push sends exactly these (`hub.checkpoint_files`).
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"  # a sharded checkpoint: the index and the shards it names
SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
ESTIMATOR_CONFIG_NAME = "kmeans_estimator.json"
ESTIMATOR_ARRAYS_NAME = "kmeans_estimator.safetensors"
# Files a checkpoint may hold besides the config, weights, code and card: the fitted estimator's, and the one other
# file transformers writes beside a model's weights.
OPTIONAL_FILES = (ESTIMATOR_CONFIG_NAME, ESTIMATOR_ARRAYS_NAME, "generation_config.json")
# The code files for `trust_remote_code`; the modules they import relatively travel with them.
CODE_FILES = ("configuration_kmeans_transformer.py", "modeling_kmeans_transformer.py")
# The code files of every model of the package: the k-means transformer's and those of the models that learn to cluster.
PACKAGE_CODE_FILES = frozenset(
    {
        *CODE_FILES,
        *(Path(path).name for path in get_relative_import_files(modeling_kmeans_transformer.__file__)),
        *(Path(path).name for path in get_relative_import_files(in_context.__file__)),
        "attention_clustering.py",
        "in_context.py",
    }
)


def build_model(
    num_clusters: int,
    point_dim: int,
    num_iterations: int,
    variant: str = "lloyd",
    dtype: str = "float32",
    share_layers: bool = True,
    **variant_parameters,
) -> KMeansTransformerModel:
    """
    The analytic model of `variant`, in `dtype` (`"float32"` or `"float64"`). `variant_parameters` are the variant's
    own config fields (`variants.PARAMETER_NAMES`: `inverse_temperature`, `fuzzifier`, ...); those given as None take
    the variant's defaults.
    """
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; expected one of {list(DTYPES)}.")
    config = KMeansTransformerConfig(
        num_clusters=num_clusters,
        point_dim=point_dim,
        num_iterations=num_iterations,
        variant=variant,
        share_layers=share_layers,
        **{name: value for name, value in variant_parameters.items() if value is not None},
    )
    return KMeansTransformerModel(config).to(DTYPES[dtype]).eval()


def check_checkpoint_directory(directory, overwrite: bool, how: str = "pass --overwrite") -> Path:
    """
    Refuse, before any work, an output `directory` (a checkpoint, or results) that is a file or is not empty (unless
    `overwrite`). For a checkpoint, use [`check_checkpoint_output`], which also refuses to replace a directory that
    holds files of no checkpoint.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} exists and is not a directory.")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory} is not empty; {how} to write into it anyway.")
    return directory


def is_checkpoint_file(path: Path) -> bool:
    """Whether `path`, an entry of a directory, is one a checkpoint of this package holds (by name; not a folder)."""
    if path.is_dir() and not path.is_symlink():
        return False
    name = path.name
    return (
        name in (CONFIG_NAME, CARD_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME, *OPTIONAL_FILES)
        or name in PACKAGE_CODE_FILES
        or SHARD_NAME.fullmatch(name) is not None
    )


def is_previous_checkpoint(directory: Path) -> bool:
    """
    Whether `directory` holds a checkpoint's files only (a complete checkpoint, or what an interrupted write of an
    earlier version left), so that replacing it whole deletes nothing else; the `is_previous` test of an output check.
    """
    return all(is_checkpoint_file(path) for path in Path(directory).iterdir())


def check_checkpoint_output(directory, overwrite: bool, how: str = "pass --overwrite") -> Path:
    """
    `directory` as a Path if a checkpoint may be written there, checked before any work: it does not exist, or is
    empty, or (with `overwrite`) holds a previous checkpoint, which the new one will replace whole. Refused
    (`FileExistsError`): a file; a symbolic link or a non-empty directory without `overwrite`; with `overwrite`, a
    directory holding anything a checkpoint does not (a folder, `notes.txt`, ...), which replacing would delete.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} exists and is not a directory.")
    if directory.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{directory} is a symbolic link; {how} to replace the link (never its target).")
        return directory
    if not directory.is_dir() or not any(directory.iterdir()):
        return directory
    if not overwrite:
        raise FileExistsError(f"{directory} is not empty; {how} to replace it.")
    foreign = sorted(path.name for path in directory.iterdir() if not is_checkpoint_file(path))
    if foreign:
        listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise FileExistsError(
            f"{directory} holds files that are not part of a checkpoint ({listed}); replacing the directory would "
            "delete them: move them or choose another directory."
        )
    return directory


def is_owned_checkpoint_file(path: Path) -> bool:
    """Whether `path` is a file of a checkpoint of this package that a new save may replace or remove: a checkpoint
    file by name ([`is_checkpoint_file`]), except a `README.md` this package did not write (`cards.is_package_card`)."""
    return is_checkpoint_file(path) and (path.name != CARD_NAME or is_package_card(path))


def saving_checkpoint(directory, overwrite: bool = False):
    """
    The semantics of transformers' `save_pretrained` for every `save_pretrained` of the package (a context manager
    that yields the temporary directory to write the checkpoint into, `files.writing_into_directory`): writing into
    an existing directory is allowed; each file is written under a temporary name and renamed into place, replacing
    the file of that name; the files of a previous checkpoint that the new one does not write (stale weight shards,
    stale estimator files, a stale card of this package) are removed; other files are left untouched; an exception
    while writing leaves the previous checkpoint as it was. One exception: a `README.md` that this package did not
    write (its metadata lacks the `kmeans-transformer` tag) is kept, with a warning, and the new card is not
    written, unless `overwrite`, which replaces it.
    """

    def keep(existing: Path) -> bool:
        if existing.name != CARD_NAME or overwrite or is_package_card(existing):
            return False
        warnings.warn(
            f"{existing} was not written by kmeans-transformer: it is kept and the model card is not written; pass "
            "overwrite=True to replace it.",
            UserWarning,
            stacklevel=4,
        )
        return True

    return writing_into_directory(directory, is_owned=is_owned_checkpoint_file, keep=keep)


def convert_checkpoint(
    model: KMeansTransformerModel, output_dir: str | Path, overwrite: bool = False, repo_id: str | None = None
) -> ValidationReport:
    """
    Validate `model` against the reference, and only then write its checkpoint to `output_dir`, with a card naming
    the Hub repository `repo_id` if given. The checkpoint is built in a temporary sibling directory and moved into
    place complete: an interrupted write leaves no `output_dir` (or the previous one). A non-empty `output_dir` is
    refused unless `overwrite`, which replaces the previous checkpoint whole once the new one is complete (a
    directory holding other files is refused, see [`check_checkpoint_output`]). Raises `validation.ValidationError`
    when the model disagrees with the reference.
    """
    output_dir = check_checkpoint_output(output_dir, overwrite)
    report = validate_against_reference(model)
    if not report.passed:
        raise ValidationError(f"The built model disagrees with the reference, not writing a checkpoint: {report}")
    card = render_model_card(model, report, repo_id=repo_id)
    with replacing_directory(output_dir, overwrite=overwrite) as temporary:
        model.save_pretrained(temporary)
        card.save(temporary / CARD_NAME)
    return report


__all__ = [
    "CODE_FILES",
    "is_owned_checkpoint_file",
    "saving_checkpoint",
    "OPTIONAL_FILES",
    "build_model",
    "check_checkpoint_directory",
    "check_checkpoint_output",
    "convert_checkpoint",
    "is_checkpoint_file",
    "is_previous_checkpoint",
]
