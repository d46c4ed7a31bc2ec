"""Share checkpoints on the Hugging Face Hub: push a checkpoint directory, a model or a fitted estimator.

Every push goes through [`push_checkpoint`]: it checks the directory is a complete checkpoint (config, safetensors
weights, the code for `trust_remote_code`, a model card whose metadata parses), finds the token (the `token`
argument, else `HF_TOKEN`, else the login cache of `hf auth login`), checks it with the Hub, creates the repository,
says which files it sends, and commits them in one commit. It sends exactly the checkpoint's files
([`checkpoint_files`]): nothing else in the directory (data, notes, hidden files) leaves the machine, and a
checkpoint file that is a symbolic link is refused, never followed. The card is sent with the repository's id in its
loading examples and its `model-index`; the local directory is only read, so a failed push leaves it as it was.
Failures are one-line [`HubError`]s: no token, a token that is invalid or has expired (401), no write access (403), a
repository that already exists (409, unless `exist_ok`), an endpoint that cannot be reached.

The endpoint is huggingface_hub's: `HF_ENDPOINT` when set, else https://huggingface.co.
"""

import json
import logging
import os
import stat
import tempfile
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from pathlib import Path

import yaml
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from transformers.dynamic_module_utils import get_relative_imports

from .cards import render_model_card
from .configuration_kmeans_transformer import KMeansTransformerConfig
from .convert import (
    CARD_NAME,
    CODE_FILES,
    CONFIG_NAME,
    OPTIONAL_FILES,
    SHARD_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)
from .validation import validate_against_reference


try:  # the HTTP client of huggingface_hub 2.x, then of 1.x
    from httpx2 import TransportError
except ImportError:
    from httpx import TransportError


logger = logging.getLogger(__name__)

# The files every checkpoint carries (the weights may instead be sharded: `model.safetensors.index.json` and the
# shards it names). The modules the code files import relatively (as `trust_remote_code` loads them) must be there
# too, whichever they are in the package version that wrote the checkpoint.
CHECKPOINT_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, *CODE_FILES)


class HubError(RuntimeError):
    """A push that cannot be done, with the reason in one line; nothing was changed locally."""


def check_checkpoint(directory) -> Path:
    """
    `directory` as a Path if it holds a complete checkpoint of this package ([`checkpoint_files`]: the config, the
    weights, the code files and every module they import, the card; none a symbolic link), a config of model type
    `kmeans_transformer` and a card whose YAML metadata parses; a one-line `HubError` naming what is wrong otherwise.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise HubError(f"{directory} is not a directory; push a checkpoint directory written by `convert`, "
                       "`save_pretrained` or `cluster --save-model`.")
    checkpoint_files(directory)
    try:
        model_type = json.loads((directory / CONFIG_NAME).read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise HubError(f"{directory / CONFIG_NAME} is not a JSON configuration: {error}") from None
    if model_type != KMeansTransformerConfig.model_type:
        raise HubError(f"{directory} holds a {model_type!r} checkpoint, not a {KMeansTransformerConfig.model_type!r} one.")
    try:
        ModelCard.load(directory / CARD_NAME)
    except (ValueError, TypeError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise HubError(f"{directory / CARD_NAME} has invalid metadata: {' '.join(str(error).split())}") from None
    return directory


def checkpoint_files(directory) -> list[str]:
    """
    The names of the files a push of `directory` sends, and nothing else in it: `config.json`; the weights
    (`model.safetensors`, or `model.safetensors.index.json` and the shards it names); the code files
    (`CODE_FILES`) and every module they import relatively; `README.md`; and those of `OPTIONAL_FILES` present (a
    fitted estimator's `kmeans_estimator.json` and `.safetensors`). A one-line `HubError` if one is missing, is a
    symbolic link (never followed: it could point out of the directory) or is not a regular file, or if the index or
    the code names a file that is not a plain name in the directory.
    """
    directory = Path(directory)
    missing = missing_files(directory)
    if missing:
        raise HubError(f"{directory} is not a complete checkpoint: {', '.join(missing)} missing.")
    optional = [name for name in OPTIONAL_FILES if os.path.lexists(directory / name)]
    names = [CONFIG_NAME, *_weight_files(directory), *_code_files(directory)[0], CARD_NAME, *optional]
    for name in names:
        path = directory / name
        if path.is_symlink():
            raise HubError(
                f"{path} is a symbolic link: a checkpoint's files must be regular files in its directory (links are "
                "never followed); replace it with the file itself to push it."
            )
        if not path.is_file():
            raise HubError(f"{path} is not a regular file.")
    return names


def missing_files(directory: Path) -> list[str]:
    """
    The files of the checkpoint in `directory` that it lacks: of `CHECKPOINT_FILES` (the shards named by
    `model.safetensors.index.json` instead of `model.safetensors` when the index is there), and of the modules the
    code files import relatively (followed from module to module, as transformers does for `trust_remote_code`).
    """
    weights = _weight_files(directory) if os.path.lexists(directory / WEIGHTS_INDEX_NAME) else [WEIGHTS_NAME]
    required = [CONFIG_NAME, *weights, CARD_NAME, *CODE_FILES]
    missing = [name for name in required if not os.path.lexists(directory / name)]
    return missing + [name for name in _code_files(directory)[1] if name not in missing]


def _plain_name(name, source: Path) -> str:
    """`name` if it names a file directly in a checkpoint directory (no folder, not hidden); a `HubError` otherwise."""
    if not isinstance(name, str) or not name or Path(name).name != name or name.startswith(".") or "\\" in name:
        raise HubError(f"{source} names {name!r}, which is not the name of a file in the checkpoint directory.")
    return name


def _weight_files(directory: Path) -> list[str]:
    """`model.safetensors`, or the index of a sharded checkpoint and the shards it names (checked to be file names)."""
    index = directory / WEIGHTS_INDEX_NAME
    if not os.path.lexists(index):
        return [WEIGHTS_NAME]
    if index.is_symlink():
        raise HubError(f"{index} is a symbolic link: a checkpoint's files must be regular files in its directory.")
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise HubError(f"{index} is not a safetensors index ({type(error).__name__}: {error}).") from None
    for shard in shards:
        if SHARD_NAME.fullmatch(_plain_name(shard, index)) is None:
            raise HubError(f"{index} names the shard {shard!r}; expected names like model-00001-of-00002.safetensors.")
    return [WEIGHTS_INDEX_NAME, *shards]


def _code_files(directory: Path) -> tuple[list[str], list[str]]:
    """
    The code files of `directory` that are there, `CODE_FILES` first and then the modules they import relatively
    (followed from module to module), and those of them that are missing.
    """
    present, missing = [], []
    pending, seen = list(CODE_FILES), set(CODE_FILES)
    while pending:
        name = pending.pop(0)
        path = directory / name
        if not os.path.lexists(path):
            missing.append(name)
            continue
        present.append(name)
        if path.is_symlink() or not path.is_file():
            continue  # refused by `checkpoint_files`, never read
        try:
            modules = get_relative_imports(path)
        except (OSError, UnicodeDecodeError) as error:
            raise HubError(f"cannot read the code file {path} ({type(error).__name__}: {error}).") from None
        for module in sorted(modules):
            imported = _plain_name(f"{module}.py", path)
            if imported not in seen:
                seen.add(imported)
                pending.append(imported)
    return present, missing


def push_checkpoint(
    directory,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    create_pr: bool = False,
    exist_ok: bool = False,
    token: str | None = None,
    exists_hint: str = "pass exist_ok=True",
    announce: Callable[[str], None] | None = None,
):
    """
    Push the checkpoint in `directory` to the model repository `repo_id` (`OWNER/NAME`, or `NAME` in the token's
    user namespace) as one commit, on branch `revision` (created from `main` if new) or as a pull request
    (`create_pr`). Exactly the files of [`checkpoint_files`] are sent, each read through a descriptor that refuses
    a symbolic link; before the commit, one line names the repository, its visibility and every file sent: logged
    (`logging`, level INFO, logger `kmeans_transformer.hub`) and passed to `announce` if given (the command line
    prints it). A new repository is public unless `private` (huggingface_hub's default). A repository that exists is
    refused unless `exist_ok`: pushing to it replaces its files of the same names (its history keeps the old ones).
    Returns huggingface_hub's `CommitInfo` (`.commit_url`, `.oid`, `.pr_url`).
    """
    directory = check_checkpoint(directory)
    names = checkpoint_files(directory)
    if constants.is_offline_mode():
        raise HubError("HF_HUB_OFFLINE is set: unset it to push to the Hub.")
    token = token or get_token()
    if not token:
        raise HubError(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login` with a token that has write access "
            f"(create one at {constants.ENDPOINT}/settings/tokens)."
        )
    api = HfApi(token=token)
    with hub_errors(api.endpoint, repo_id, exists_hint), ExitStack() as files:
        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=files.enter_context(_open_regular(directory / name)))
            for name in names
            if name != CARD_NAME
        ]
        user = api.whoami()["name"]
        if "/" not in repo_id:
            repo_id = f"{user}/{repo_id}"
        api.create_repo(repo_id, private=private, exist_ok=exist_ok)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        visibility = "private" if api.repo_info(repo_id).private else "public"
        message = f"pushing {len(names)} files from {directory} to {repo_id} ({visibility}" + (
            f", branch {revision}): " if revision else "): ") + ", ".join(names)
        logger.info(message)
        if announce is not None:
            announce(message)
        card = card_for_repository(directory / CARD_NAME, repo_id)
        operations.append(CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=str(card).encode()))
        config = KMeansTransformerConfig.from_json_file(directory / CONFIG_NAME)
        return api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or f"Upload {config.variant} k-means transformer (k={config.num_clusters}, "
            f"d={config.point_dim}, T={config.num_iterations})",
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
        )


@contextmanager
def _open_regular(path: Path):
    """`path` opened for reading without following a symbolic link (`O_NOFOLLOW`), refused unless a regular file."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as error:
        raise HubError(f"cannot read {path} without following a link ({error.strerror}).") from None
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise HubError(f"{path} is not a regular file.")
        yield file


def card_for_repository(card_path, repo_id: str) -> ModelCard:
    """
    The card at `card_path` as it is pushed to `repo_id`: the `model-index` name and the title carry the repository's
    id, and the loading examples' placeholder `path/to/checkpoint` becomes it.
    """
    card = ModelCard.load(card_path)
    old_name = card.data.model_name
    card.data.model_name = repo_id
    text = card.text.replace('"path/to/checkpoint"', f'"{repo_id}"')
    if old_name:
        text = text.replace(f"# {old_name}:", f"# {repo_id}:", 1)
    card.text = text
    return card


def push_model(model, repo_id: str, *, exist_ok: bool = True, **push_options):
    """
    Push a `KMeansTransformerModel`: validate it against its variant's reference now, render its card with those
    figures, save it to a temporary directory and push that (`push_options` as in [`push_checkpoint`]). As with
    transformers' `push_to_hub`, an existing repository gets a new commit unless `exist_ok=False`.
    """
    report = validate_against_reference(model)
    card = render_model_card(model, report, repo_id=repo_id)
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        card.save(Path(directory) / "README.md")
        return push_checkpoint(directory, repo_id, exist_ok=exist_ok, **push_options)


@contextmanager
def hub_errors(endpoint: str, repo_id: str, exists_hint: str):
    """Turn huggingface_hub's and httpx's failures into one-line `HubError`s that say what to do."""
    try:
        yield
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        reason = (error.server_message or str(error).splitlines()[0]).strip().rstrip(".")
        if status == 401:
            message = (
                f"the Hub at {endpoint} refused the token (401 Unauthorized: {reason}): it is invalid or has expired. "
                f"Create a token with write access at {endpoint}/settings/tokens, then set HF_TOKEN or run "
                "`hf auth login`."
            )
        elif status == 403:
            message = (
                f"the token may not write to {repo_id} (403 Forbidden: {reason}); use a token with write access to "
                f"the namespace {repo_id.split('/')[0]!r}."
            )
        elif status == 409:
            message = f"{repo_id} already exists on {endpoint}; {exists_hint} to push a new commit to it."
        elif status == 404:
            message = f"{repo_id} was not found on {endpoint}, or this token cannot see it (404: {reason})."
        else:
            message = f"pushing to {repo_id} on {endpoint} failed ({status}: {reason})."
        raise HubError(message) from None
    except ValueError as error:  # the client's own checks, and a card the Hub refused ("Invalid metadata in README.md")
        raise HubError(f"pushing to {repo_id} on {endpoint} failed: {' '.join(str(error).split())}") from None
    except (TransportError, OfflineModeIsEnabled, ConnectionError) as error:
        raise HubError(
            f"cannot reach the Hub at {endpoint} ({type(error).__name__}: {error}); check HF_ENDPOINT and the network."
        ) from None


__all__ = [
    "CHECKPOINT_FILES",
    "HubError",
    "card_for_repository",
    "check_checkpoint",
    "checkpoint_files",
    "missing_files",
    "push_checkpoint",
    "push_model",
]
