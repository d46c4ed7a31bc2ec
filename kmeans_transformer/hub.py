"""Share checkpoints on the Hugging Face Hub: push a checkpoint directory, a model or a fitted estimator.

Every push goes through [`push_checkpoint`]: it checks the directory is a complete checkpoint (config, safetensors
weights, the code for `trust_remote_code`, a model card whose metadata parses), finds the token (the `token`
argument, else `HF_TOKEN`, else the login cache of `hf auth login`), checks it with the Hub, creates the repository
and commits the files in one commit. The card is sent with the repository's id in its loading examples and its
`model-index`; the local directory is only read, so a failed push leaves it as it was. Failures are one-line
[`HubError`]s: no token, a token that is invalid or has expired (401), no write access (403), a repository that
already exists (409, unless `exist_ok`), an endpoint that cannot be reached.

The endpoint is huggingface_hub's: `HF_ENDPOINT` when set, else https://huggingface.co.
"""

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path

import yaml
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from transformers.dynamic_module_utils import get_relative_imports

from .cards import render_model_card
from .configuration_kmeans_transformer import KMeansTransformerConfig
from .validation import validate_against_reference


try:  # the HTTP client of huggingface_hub 2.x, then of 1.x
    from httpx2 import TransportError
except ImportError:
    from httpx import TransportError


# The code files every checkpoint carries; the modules they import relatively (as `trust_remote_code` loads them)
# must be there too, whichever they are in the package version that wrote the checkpoint.
CODE_FILES = ("configuration_kmeans_transformer.py", "modeling_kmeans_transformer.py")
CHECKPOINT_FILES = ("config.json", "model.safetensors", "README.md", *CODE_FILES)


class HubError(RuntimeError):
    """A push that cannot be done, with the reason in one line; nothing was changed locally."""


def check_checkpoint(directory) -> Path:
    """
    `directory` as a Path if it holds a complete checkpoint of this package (`CHECKPOINT_FILES` and every module the
    code files import, a config of model type `kmeans_transformer` and a card whose YAML metadata parses); a one-line
    `HubError` naming what is missing otherwise.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise HubError(f"{directory} is not a directory; push a checkpoint directory written by `convert`, "
                       "`save_pretrained` or `cluster --save-model`.")
    missing = missing_files(directory)
    if missing:
        raise HubError(f"{directory} is not a complete checkpoint: {', '.join(missing)} missing.")
    try:
        model_type = json.loads((directory / "config.json").read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as error:
        raise HubError(f"{directory / 'config.json'} is not a JSON configuration: {error}") from None
    if model_type != KMeansTransformerConfig.model_type:
        raise HubError(f"{directory} holds a {model_type!r} checkpoint, not a {KMeansTransformerConfig.model_type!r} one.")
    try:
        ModelCard.load(directory / "README.md")
    except (ValueError, TypeError, yaml.YAMLError) as error:
        raise HubError(f"{directory / 'README.md'} has invalid metadata: {' '.join(str(error).split())}") from None
    return directory


def missing_files(directory: Path) -> list[str]:
    """
    The files of `CHECKPOINT_FILES`, and of the modules the code files import relatively (followed from module to
    module, as transformers does for `trust_remote_code`), that `directory` lacks.
    """
    missing = [name for name in CHECKPOINT_FILES if not (directory / name).is_file()]
    pending = [name for name in CODE_FILES if (directory / name).is_file()]
    seen = set(CODE_FILES)
    while pending:
        for module in sorted(get_relative_imports(directory / pending.pop())):
            name = f"{module}.py"
            if name not in seen:
                seen.add(name)
                (pending if (directory / name).is_file() else missing).append(name)
    return missing


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
):
    """
    Push the checkpoint in `directory` to the model repository `repo_id` (`OWNER/NAME`, or `NAME` in the token's
    user namespace) as one commit, on branch `revision` (created from `main` if new) or as a pull request
    (`create_pr`). A repository that exists is refused unless `exist_ok`: pushing to it replaces its files of the
    same names (its history keeps the old ones). Returns huggingface_hub's `CommitInfo` (`.commit_url`,
    `.oid`, `.pr_url`).
    """
    directory = check_checkpoint(directory)
    if constants.is_offline_mode():
        raise HubError("HF_HUB_OFFLINE is set: unset it to push to the Hub.")
    token = token or get_token()
    if not token:
        raise HubError(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login` with a token that has write access "
            f"(create one at {constants.ENDPOINT}/settings/tokens)."
        )
    api = HfApi(token=token)
    with hub_errors(api.endpoint, repo_id, exists_hint):
        user = api.whoami()["name"]
        if "/" not in repo_id:
            repo_id = f"{user}/{repo_id}"
        api.create_repo(repo_id, private=private, exist_ok=exist_ok)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        config = KMeansTransformerConfig.from_json_file(directory / "config.json")
        operations = [
            CommitOperationAdd(path_in_repo=path.relative_to(directory).as_posix(), path_or_fileobj=str(path))
            for path in sorted(directory.rglob("*"))
            if path.is_file() and path != directory / "README.md" and not _hidden(path.relative_to(directory))
        ]
        card = card_for_repository(directory / "README.md", repo_id)
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()))
        return api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or f"Upload {config.variant} k-means transformer (k={config.num_clusters}, "
            f"d={config.point_dim}, T={config.num_iterations})",
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
        )


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


def _hidden(relative: Path) -> bool:
    """Whether a path inside a checkpoint is hidden (`.cache/`, `.git/`, editor files): those are not pushed."""
    return any(part.startswith(".") for part in relative.parts)


__all__ = [
    "CHECKPOINT_FILES",
    "HubError",
    "card_for_repository",
    "check_checkpoint",
    "missing_files",
    "push_checkpoint",
    "push_model",
]
