"""An in-process server speaking the Hugging Face Hub's HTTP protocol, for tests.

The real ``huggingface_hub`` and ``transformers`` clients talk to it once ``HF_ENDPOINT``
(and the constants ``huggingface_hub`` read from it at import time) point at it: the
:func:`hub` fixture below does that, gives every test a fresh cache, and yields the server.

Everything lives in memory: users and tokens, model repositories, their branches and
commits (each commit a full snapshot of the repository's files), and the LFS objects.

Routes served (``{repo}`` is ``namespace/name``, ``{rev}`` a branch name or a commit oid,
URL-quoted as the clients send them)::

    GET    /api/whoami-v2                                  who the token belongs to
    GET    /api/agent-harnesses                            (client telemetry registry: empty)
    POST   /api/repos/create                               create a model repo (409 if it exists)
    DELETE /api/repos/delete                               delete a repo
    POST   /api/validate-yaml                              check a README's YAML front matter
    GET    /api/models/{repo}                              model_info / repo_info at main
    GET    /api/models/{repo}/revision/{rev}               model_info at a revision
    GET    /api/models/{repo}/tree/{rev}[/{path}]          list_repo_tree (``recursive``)
    POST   /api/models/{repo}/paths-info/{rev}             get_paths_info
    GET    /api/models/{repo}/refs                         list_repo_refs
    GET    /api/models/{repo}/commits/{rev}                list_repo_commits
    POST   /api/models/{repo}/branch/{branch}              create_branch (``startingPoint``)
    DELETE /api/models/{repo}/branch/{branch}              delete_branch
    POST   /api/models/{repo}/preupload/{rev}              upload modes ("regular" / "lfs")
    POST   /api/models/{repo}/commit/{rev}                 create_commit (NDJSON body)
    POST   /{repo}.git/info/lfs/objects/batch              Git LFS batch API, "basic" transfer
    PUT    /lfs-objects/{sha256}                           LFS upload target of the batch API
    POST   /lfs-objects/{sha256}/verify                    LFS verify action
    HEAD   /{repo}/resolve/{rev}/{path}                    file metadata (hf_hub_download)
    GET    /{repo}/resolve/{rev}/{path}                    file content (``Range`` supported)

Xet storage is never offered: no response carries the ``X-Xet-*`` headers or a ``xet-auth``
link, and the Xet token routes (``/api/models/{repo}/xet-*-token/...``) answer 501. Note that
``huggingface_hub`` decides *client side* to upload through Xet whenever the ``hf_xet``
package is installed, so clients must run with ``HF_HUB_DISABLE_XET=1`` (the fixture sets it).

Errors look like the Hub's: a JSON body ``{"error": ...}`` plus the ``X-Error-Message`` header,
and ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) where the Hub
sends one, so that ``huggingface_hub`` raises the same exception classes as against the Hub.
Unknown routes are logged to stderr and answered 404.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import fnmatch
import hashlib
import itertools
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest
import yaml

__all__ = ["HubServer", "hub", "validate_card_metadata"]

LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
"""Files larger than this are stored with Git LFS, whatever their name."""

DEFAULT_GITATTRIBUTES = """\
*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.bz2 filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.joblib filter=lfs diff=lfs merge=lfs -text
*.msgpack filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.npz filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pickle filter=lfs diff=lfs merge=lfs -text
*.pkl filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.tar filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*.zst filter=lfs diff=lfs merge=lfs -text
"""
"""Content of the ``.gitattributes`` in every new repo's first commit (LFS-tracked patterns)."""


# --------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob holding ``data`` (what ``git hash-object`` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True)
class Blob:
    """One file's content; ``is_lfs`` files are stored as LFS objects behind a pointer."""

    data: bytes
    is_lfs: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        """The Git LFS pointer file git stores in place of an LFS file."""
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()

    @property
    def oid(self) -> str:
        """Git blob oid: of the content for regular files, of the pointer for LFS files."""
        return git_blob_oid(self.pointer if self.is_lfs else self.data)

    @property
    def etag(self) -> str:
        """What the Hub reports as the file's etag: the blob oid, or the sha256 for LFS files."""
        return self.sha256 if self.is_lfs else self.oid


@dataclasses.dataclass
class Commit:
    oid: str
    title: str
    description: str
    date: str
    parents: list[str]
    files: dict[str, Blob]
    author: str


@dataclasses.dataclass
class Repo:
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, list[Commit]]  # branch name -> its commits, oldest first

    def head(self, branch: str) -> Commit | None:
        commits = self.branches.get(branch)
        return commits[-1] if commits else None

    def commit(self, revision: str) -> Commit | None:
        """The commit a branch name or a (full or abbreviated) commit oid designates."""
        if revision in self.branches:
            return self.head(revision)
        if len(revision) >= 7 and all(c in "0123456789abcdef" for c in revision.lower()):
            for commit in itertools.chain.from_iterable(self.branches.values()):
                if commit.oid.startswith(revision.lower()):
                    return commit
        return None


@dataclasses.dataclass(frozen=True)
class Token:
    token: str
    user: str
    orgs: tuple[str, ...]
    write: bool
    expired: bool

    @property
    def namespaces(self) -> set[str]:
        return {self.user, *self.orgs}


class HubError(Exception):
    """An HTTP error answer: status, message, and the Hub's ``X-Error-Code`` if any."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}
        self.extra = extra


# --------------------------------------------------------------------------------------
# README metadata validation
# --------------------------------------------------------------------------------------


def split_front_matter(text: str) -> tuple[str | None, str]:
    """``(yaml_text, body)`` of a README; ``yaml_text`` is None when there is no front matter."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].rstrip("\r\n") != "---":
        return None, text
    for i in range(1, len(lines)):
        if lines[i].rstrip("\r\n") == "---":
            return "".join(lines[1:i]), "".join(lines[i + 1 :])
    return None, text


def _check_str(value, where: str) -> None:
    if not isinstance(value, str):
        raise ValueError(f'"{where}" must be a string')


def _check_number_or_str(value, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f'"{where}" must be a number or a string')


def _check_mapping(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f'"{where}" must be an object')
    return value


def _check_list(value, where: str) -> list:
    if not isinstance(value, list):
        raise ValueError(f'"{where}" must be an array')
    return value


def _check_model_index(model_index) -> None:
    for i, entry in enumerate(_check_list(model_index, "model-index")):
        where = f"model-index[{i}]"
        entry = _check_mapping(entry, where)
        if "name" not in entry:
            raise ValueError(f'"{where}.name" is required')
        _check_str(entry["name"], f"{where}.name")
        if "results" not in entry:
            raise ValueError(f'"{where}.results" is required')
        for j, result in enumerate(_check_list(entry["results"], f"{where}.results")):
            rwhere = f"{where}.results[{j}]"
            result = _check_mapping(result, rwhere)
            for key in ("task", "dataset", "metrics"):
                if key not in result:
                    raise ValueError(f'"{rwhere}.{key}" is required')
            task = _check_mapping(result["task"], f"{rwhere}.task")
            if "type" not in task:
                raise ValueError(f'"{rwhere}.task.type" is required')
            _check_str(task["type"], f"{rwhere}.task.type")
            dataset = _check_mapping(result["dataset"], f"{rwhere}.dataset")
            for key in ("type", "name"):
                if key not in dataset:
                    raise ValueError(f'"{rwhere}.dataset.{key}" is required')
                _check_str(dataset[key], f"{rwhere}.dataset.{key}")
            for k, metric in enumerate(_check_list(result["metrics"], f"{rwhere}.metrics")):
                mwhere = f"{rwhere}.metrics[{k}]"
                metric = _check_mapping(metric, mwhere)
                for key in ("type", "value"):
                    if key not in metric:
                        raise ValueError(f'"{mwhere}.{key}" is required')
                _check_str(metric["type"], f"{mwhere}.type")
                _check_number_or_str(metric["value"], f"{mwhere}.value")


def validate_card_metadata(text: str) -> dict:
    """Validate a README's YAML front matter like the Hub does; return it (``{}`` if none).

    Raises ``ValueError`` with a message naming the problem.
    """
    front, _ = split_front_matter(text)
    if front is None:
        return {}
    try:
        metadata = yaml.safe_load(front)
    except yaml.YAMLError as err:
        raise ValueError(f"Invalid YAML in README.md metadata: {err}") from None
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ValueError("YAML metadata in README.md must be a mapping (an object), not a " + type(metadata).__name__)
    for key in ("license", "library_name", "pipeline_tag"):
        if key in metadata:
            _check_str(metadata[key], key)
    if "tags" in metadata:
        for i, tag in enumerate(_check_list(metadata["tags"], "tags")):
            _check_str(tag, f"tags[{i}]")
    if "model-index" in metadata:
        _check_model_index(metadata["model-index"])
    return metadata


def _card_data(files: dict[str, Blob]) -> dict | None:
    readme = files.get("README.md")
    if readme is None:
        return None
    try:
        metadata = validate_card_metadata(readme.data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    # JSON round trip: YAML dates and the like become strings
    return json.loads(json.dumps(metadata, default=str)) if metadata else None


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Failure:
    substring: str
    status: int
    message: str
    method: str | None
    remaining: int


class HubServer:
    """An in-memory Hugging Face Hub on ``127.0.0.1``, served from a daemon thread.

    Use it as a context manager, or call :meth:`close` when done.

    Attributes:
        endpoint: ``"http://127.0.0.1:PORT"``, the value for ``HF_ENDPOINT``.
        requests: ``(method, path)`` of every request received, in order (path without query).
        repos: ``repo_id -> Repo``, the stored repositories.
        lfs_objects: ``sha256 -> bytes``, the uploaded LFS objects.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self._tokens: dict[str, Token] = {}
        self._failures: list[_Failure] = []
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="hub-server", daemon=True
        )
        self._thread.start()

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- test controls -----------------------------------------------------------------

    def add_token(
        self, token: str, user: str, orgs=(), write: bool = True, expired: bool = False
    ) -> None:
        """Register ``token`` for ``user`` (member of ``orgs``); read-only unless ``write``."""
        with self._lock:
            self._tokens[token] = Token(token, user, tuple(orgs), write, expired)

    def fail_next(
        self, path_substring: str, status: int = 500, message: str = "Internal Error (injected)",
        *, method: str | None = None, times: int = 1,
    ) -> None:
        """Make the next ``times`` requests whose path contains ``path_substring`` fail.

        ``method`` restricts the failure to one HTTP method. Note that ``huggingface_hub``
        retries many calls on 408/429/5xx (up to 5 times, with backoff), so a single injected
        500 may be invisible to it; use a 4xx status, or ``times`` > 5, to make a call fail.
        """
        with self._lock:
            self._failures.append(_Failure(path_substring, status, message, method, times))

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """``path -> content`` of the repo's files at ``revision`` (branch or commit oid)."""
        with self._lock:
            repo = self.repos[repo_id]
            commit = repo.commit(revision)
            if commit is None:
                raise KeyError(f"no revision {revision!r} in {repo_id}")
            return {path: blob.data for path, blob in commit.files.items()}

    def commits(self, repo_id: str, branch: str = "main") -> list[Commit]:
        """The commits of a branch, oldest first."""
        with self._lock:
            return list(self.repos[repo_id].branches[branch])

    def create_repo(self, repo_id: str, *, private: bool = False, author: str = "hub") -> Repo:
        """Create a repo directly (no HTTP, no auth): first commit holds ``.gitattributes``."""
        with self._lock:
            if repo_id in self.repos:
                raise ValueError(f"{repo_id} exists")
            first = self._new_commit(
                "initial commit", "", [], {".gitattributes": Blob(DEFAULT_GITATTRIBUTES.encode())}, author
            )
            repo = Repo(repo_id, private, _now(), {"main": [first]})
            self.repos[repo_id] = repo
            return repo

    # -- internals ---------------------------------------------------------------------

    def _new_commit(self, title, description, parents, files, author) -> Commit:
        seed = f"{next(self._counter)}:{title}:{parents}:{sorted((p, b.oid) for p, b in files.items())}:{_now()}"
        oid = hashlib.sha1(seed.encode()).hexdigest()
        return Commit(oid, title, description, _now(), list(parents), dict(files), author)

    def _take_failure(self, method: str, path: str) -> _Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.substring in path and failure.method in (None, method):
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        self._failures.remove(failure)
                    return failure
        return None


# --------------------------------------------------------------------------------------
# Request handling
# --------------------------------------------------------------------------------------


class _Request:
    """A parsed request: method, path segments (unquoted), query, headers, body."""

    def __init__(self, method: str, raw_path: str, headers, body: bytes) -> None:
        split = urlsplit(raw_path)
        self.method = method
        self.raw_path = split.path
        self.segments = [unquote(s) for s in split.path.split("/")[1:]]
        self.query = {k: v for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        self.headers = headers
        self.body = body

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in ("1", "true", "yes")

    def json(self) -> dict:
        if not self.body:
            return {}
        try:
            data = json.loads(self.body)
        except ValueError:
            raise HubError(400, "Invalid JSON body") from None
        if not isinstance(data, dict):
            raise HubError(400, "JSON body must be an object")
        return data


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalHub/1.0"

    # silence the default per-request logging
    def log_message(self, format, *args) -> None:  # noqa: A002
        pass

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        request = _Request(self.command, self.path, self.headers, self._read_body())
        with self.hub._lock:
            self.hub.requests.append((request.method, request.raw_path))
        failure = self.hub._take_failure(request.method, request.raw_path)
        try:
            if failure is not None:
                raise HubError(failure.status, failure.message)
            status, headers, body = _route(self.hub, request)
        except HubError as err:
            status, headers, body = _error_response(err, request)
        except Exception as err:  # a bug in the server: make it visible
            import traceback

            traceback.print_exc(file=sys.stderr)
            status, headers, body = _error_response(HubError(500, f"Internal server error: {err!r}"), request)
        self.send_response(status)
        headers.setdefault("Content-Type", "application/json")
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if request.method != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle


def _json(data, status: int = 200, headers: dict | None = None) -> tuple[int, dict, bytes]:
    return status, dict(headers or {}), json.dumps(data).encode()


def _error_response(err: HubError, request: _Request) -> tuple[int, dict, bytes]:
    # header values must be latin-1 and single line
    header_message = err.message.replace("\n", " ").encode("latin-1", "replace").decode("latin-1")
    headers = {"X-Error-Message": header_message, **err.headers}
    if err.code:
        headers["X-Error-Code"] = err.code
    accept = request.headers.get("Accept") or ""
    if accept.startswith("text/plain"):
        return err.status, {**headers, "Content-Type": "text/plain; charset=utf-8"}, err.message.encode()
    return _json({"error": err.message, **err.extra}, err.status, headers)


def _route(hub: HubServer, req: _Request) -> tuple[int, dict, bytes]:
    seg, method = req.segments, req.method
    if seg[:1] == ["api"]:
        rest = seg[1:]
        if rest == ["whoami-v2"] and method == "GET":
            return _whoami(hub, req)
        if rest == ["repos", "create"] and method == "POST":
            return _create_repo(hub, req)
        if rest == ["repos", "delete"] and method == "DELETE":
            return _delete_repo(hub, req)
        if rest == ["validate-yaml"] and method == "POST":
            return _validate_yaml(req)
        if rest == ["agent-harnesses"] and method == "GET":  # client telemetry registry: none known
            return _json({"standardEnvVars": [], "harnesses": {}})
        if len(rest) >= 3 and rest[0] in ("models", "datasets", "spaces"):
            if rest[0] != "models":
                raise HubError(404, "Repository not found", "RepoNotFound")
            return _model_api(hub, req, f"{rest[1]}/{rest[2]}", rest[3:])
    elif len(seg) == 6 and seg[2:] == ["info", "lfs", "objects", "batch"] and seg[1].endswith(".git"):
        if method == "POST":
            return _lfs_batch(hub, req, f"{seg[0]}/{seg[1][: -len('.git')]}")
    elif seg[:1] == ["lfs-objects"] and len(seg) in (2, 3):
        if method == "PUT" and len(seg) == 2:
            return _lfs_put(hub, req, seg[1])
        if method == "POST" and seg[2:] == ["verify"]:
            return _lfs_verify(hub, req, seg[1])
    elif len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
        return _resolve(hub, req, f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]))
    print(f"[hub_server] unhandled route: {method} {req.raw_path}", file=sys.stderr)
    raise HubError(404, f"Sorry, we can't find the page you are looking for ({method} {req.raw_path}).")


def _model_api(hub: HubServer, req: _Request, repo_id: str, rest: list[str]):
    method = req.method
    if not rest and method == "GET":
        return _model_info(hub, req, repo_id, "main")
    action = rest[0] if rest else ""
    if action == "revision" and len(rest) == 2 and method == "GET":
        return _model_info(hub, req, repo_id, rest[1])
    if action == "tree" and len(rest) >= 2 and method == "GET":
        return _tree(hub, req, repo_id, rest[1], "/".join(rest[2:]).strip("/"))
    if action == "paths-info" and len(rest) == 2 and method == "POST":
        return _paths_info(hub, req, repo_id, rest[1])
    if action == "refs" and len(rest) == 1 and method == "GET":
        return _refs(hub, req, repo_id)
    if action == "commits" and len(rest) == 2 and method == "GET":
        return _list_commits(hub, req, repo_id, rest[1])
    if action == "branch" and len(rest) == 2 and method in ("POST", "DELETE"):
        return _branch(hub, req, repo_id, rest[1])
    if action == "preupload" and len(rest) == 2 and method == "POST":
        return _preupload(hub, req, repo_id, rest[1])
    if action == "commit" and len(rest) == 2 and method == "POST":
        return _commit(hub, req, repo_id, rest[1])
    if action.startswith("xet-") and action.endswith("-token"):
        raise HubError(501, "Xet storage is not supported by this server: set HF_HUB_DISABLE_XET=1 in the client.")
    print(f"[hub_server] unhandled route: {method} {req.raw_path}", file=sys.stderr)
    raise HubError(404, f"Sorry, we can't find the page you are looking for ({method} {req.raw_path}).")


# -- authentication --------------------------------------------------------------------


def _token(hub: HubServer, req: _Request, required: bool) -> Token | None:
    """The request's token; 401 for an unknown or expired token, or a missing required one."""
    auth = req.headers.get("Authorization") or ""
    value = auth[len("bearer ") :].strip() if auth.lower().startswith("bearer ") else ""
    if not value:
        if required:
            raise HubError(401, "Invalid username or password.")
        return None
    token = hub._tokens.get(value)
    if token is None:
        raise HubError(401, "Invalid credentials in Authorization header")
    if token.expired:
        raise HubError(401, "Your access token has expired. Please create a new one at /settings/tokens")
    return token


def _repo_for_read(hub: HubServer, req: _Request, repo_id: str) -> tuple[Repo, Token | None]:
    """The repo if the requester may see it, else 404 RepoNotFound (as for a missing repo)."""
    token = _token(hub, req, required=False)
    repo = hub.repos.get(repo_id)
    if repo is None or (repo.private and (token is None or repo_id.split("/")[0] not in token.namespaces)):
        raise HubError(404, "Repository not found", "RepoNotFound")
    return repo, token


def _repo_for_write(hub: HubServer, req: _Request, repo_id: str) -> tuple[Repo, Token]:
    """The repo if the requester may write to it: 401 without a token, 403 without the rights."""
    token = _token(hub, req, required=True)
    repo, _ = _repo_for_read(hub, req, repo_id)
    namespace = repo_id.split("/")[0]
    if namespace not in token.namespaces:
        raise HubError(403, f"You don't have the rights to write to the repository {repo_id}")
    if not token.write:
        raise HubError(
            403, f"You don't have the rights to write to the repository {repo_id}: this token has read-only permissions"
        )
    return repo, token


def _revision(repo: Repo, revision: str) -> Commit:
    commit = repo.commit(revision)
    if commit is None:
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
    return commit


# -- account and repo management -------------------------------------------------------


def _whoami(hub: HubServer, req: _Request):
    token = _token(hub, req, required=True)
    role = "write" if token.write else "read"
    return _json(
        {
            "type": "user",
            "id": hashlib.sha1(token.user.encode()).hexdigest()[:24],
            "name": token.user,
            "fullname": token.user.capitalize(),
            "email": f"{token.user}@example.com",
            "emailVerified": True,
            "canPay": False,
            "isPro": False,
            "orgs": [{"type": "org", "name": org, "fullname": org, "roleInOrg": "admin"} for org in token.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": f"{token.user}-{role}", "role": role}},
        }
    )


def _create_repo(hub: HubServer, req: _Request):
    token = _token(hub, req, required=True)
    payload = req.json()
    repo_type = payload.get("type") or "model"
    if repo_type != "model":
        raise HubError(400, f"This server only hosts model repos, not {repo_type!r}")
    name = payload.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise HubError(400, "Invalid repo name")
    namespace = payload.get("organization") or token.user
    repo_id = f"{namespace}/{name}"
    if namespace not in token.namespaces or not token.write:
        raise HubError(403, f'You don\'t have the rights to create a model under the namespace "{namespace}"')
    private = payload.get("visibility") == "private" if "visibility" in payload else bool(payload.get("private"))
    url = f"{hub.endpoint}/{repo_id}"
    with hub._lock:
        if repo_id in hub.repos:
            raise HubError(409, "You already created this model repo", url=url)
        repo = hub.create_repo(repo_id, private=private, author=token.user)
    return _json({"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                  "private": repo.private})


def _delete_repo(hub: HubServer, req: _Request):
    payload = req.json()
    namespace = payload.get("organization") or _token(hub, req, required=True).user
    repo_id = f"{namespace}/{payload.get('name')}"
    with hub._lock:
        _repo_for_write(hub, req, repo_id)
        del hub.repos[repo_id]
    return _json({})


def _branch(hub: HubServer, req: _Request, repo_id: str, branch: str):
    with hub._lock:
        repo, token = _repo_for_write(hub, req, repo_id)
        if req.method == "DELETE":
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            if branch == "main":
                raise HubError(403, "Cannot delete the default branch")
            del repo.branches[branch]
            return _json({})
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = req.json().get("startingPoint") or "main"
        repo.branches[branch] = [_revision(repo, start)]
    return _json({})


def _refs(hub: HubServer, req: _Request, repo_id: str):
    with hub._lock:
        repo, _ = _repo_for_read(hub, req, repo_id)
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": commits[-1].oid}
            for name, commits in repo.branches.items()
        ]
    return _json({"branches": branches, "converts": [], "tags": [], "pullRequests": []})


def _list_commits(hub: HubServer, req: _Request, repo_id: str, revision: str):
    with hub._lock:
        repo, _ = _repo_for_read(hub, req, repo_id)
        head = _revision(repo, revision)
        by_oid = {c.oid: c for c in itertools.chain.from_iterable(repo.branches.values())}
        history, commit = [], head
        while commit is not None:
            history.append(commit)
            commit = by_oid.get(commit.parents[0]) if commit.parents else None
    return _json(
        [
            {"id": c.oid, "title": c.title, "message": c.description, "date": c.date,
             "authors": [{"user": c.author}]}
            for c in history
        ]
    )


# -- README validation -----------------------------------------------------------------


def _validate_yaml(req: _Request):
    payload = req.json()
    content = payload.get("content")
    if not isinstance(content, str):
        raise HubError(400, '"content" must be a string')
    try:
        validate_card_metadata(content)
    except ValueError as err:
        raise HubError(400, str(err), errors=[{"message": str(err)}]) from None
    return _json({"errors": [], "warnings": []})


# -- reads -----------------------------------------------------------------------------


def _sibling(path: str, blob: Blob, blobs: bool) -> dict:
    entry = {"rfilename": path}
    if blobs:
        entry.update(size=len(blob.data), blobId=blob.oid)
        if blob.is_lfs:
            entry["lfs"] = {"sha256": blob.sha256, "size": len(blob.data), "pointerSize": len(blob.pointer)}
    return entry


def _model_info(hub: HubServer, req: _Request, repo_id: str, revision: str):
    with hub._lock:
        repo, _ = _repo_for_read(hub, req, repo_id)
        commit = _revision(repo, revision)
    card = _card_data(commit.files) or {}
    config = None
    if "config.json" in commit.files:
        try:
            full = json.loads(commit.files["config.json"].data)
            config = {k: full[k] for k in ("architectures", "model_type", "auto_map") if k in full}
        except ValueError:
            pass
    tags = [t for t in card.get("tags", []) if isinstance(t, str)]
    library = card.get("library_name") or ("transformers" if config is not None else None)
    if library and library not in tags:
        tags.insert(0, library)
    if isinstance(card.get("license"), str):
        tags.append(f"license:{card['license']}")
    info = {
        "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
        "id": repo_id,
        "modelId": repo_id,
        "author": repo_id.split("/")[0],
        "sha": commit.oid,
        "lastModified": commit.date,
        "createdAt": repo.created_at,
        "private": repo.private,
        "disabled": False,
        "gated": False,
        "downloads": 0,
        "likes": 0,
        "tags": tags,
        "library_name": library,
        "pipeline_tag": card.get("pipeline_tag"),
        "siblings": [_sibling(p, b, req.flag("blobs")) for p, b in sorted(commit.files.items())],
        "spaces": [],
        "usedStorage": sum(len(b.data) for b in commit.files.values()),
    }
    if card:
        info["cardData"] = card
        if "model-index" in card:
            info["model-index"] = card["model-index"]
    if config is not None:
        info["config"] = config
    info = {k: v for k, v in info.items() if v is not None}
    expand = req.query.get("expand") or req.query.get("expand[]")
    if expand:
        info = {k: v for k, v in info.items() if k in ("_id", "id") or k in expand}
    return _json(info)


def _tree_entries(files: dict[str, Blob], prefix: str, recursive: bool) -> list[dict] | None:
    """Entries under folder ``prefix`` ("" for the root); None if there is no such folder."""
    base = f"{prefix}/" if prefix else ""
    below = {p: b for p, b in files.items() if p.startswith(base)}
    if prefix and not below:
        return None
    entries: dict[str, dict] = {}
    for path, blob in sorted(below.items()):
        parts = path[len(base) :].split("/")
        # folders between the prefix and the file
        for depth in range(1, len(parts)):
            folder = base + "/".join(parts[:depth])
            if folder not in entries and (recursive or depth == 1):
                entries[folder] = {"type": "directory", "oid": _folder_oid(files, folder), "size": 0, "path": folder}
            if not recursive:
                break
        if recursive or len(parts) == 1:
            entries[path] = _file_entry(path, blob)
    return [entries[k] for k in sorted(entries)]


def _folder_oid(files: dict[str, Blob], folder: str) -> str:
    listing = "".join(f"{p}:{b.oid}\n" for p, b in sorted(files.items()) if p.startswith(folder + "/"))
    return hashlib.sha1(listing.encode()).hexdigest()


def _file_entry(path: str, blob: Blob) -> dict:
    entry = {"type": "file", "oid": blob.oid, "size": len(blob.data), "path": path}
    if blob.is_lfs:
        entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": len(blob.pointer)}
    return entry


def _tree(hub: HubServer, req: _Request, repo_id: str, revision: str, path: str):
    with hub._lock:
        repo, _ = _repo_for_read(hub, req, repo_id)
        commit = _revision(repo, revision)
    entries = _tree_entries(commit.files, path, req.flag("recursive"))
    if entries is None:
        raise HubError(404, f"{path} does not exist on \"{revision}\"", "EntryNotFound",
                       headers={"X-Repo-Commit": commit.oid})
    return _json(entries, headers={"X-Repo-Commit": commit.oid})


def _paths_info(hub: HubServer, req: _Request, repo_id: str, revision: str):
    with hub._lock:
        repo, _ = _repo_for_read(hub, req, repo_id)
        commit = _revision(repo, revision)
    content_type = req.headers.get("Content-Type") or ""
    if "json" in content_type:
        paths = req.json().get("paths") or []
    else:
        paths = parse_qs(req.body.decode(), keep_blank_values=True).get("paths", [])
    result = []
    for path in paths:
        path = path.strip("/")
        if path in commit.files:
            result.append(_file_entry(path, commit.files[path]))
        elif any(p.startswith(path + "/") for p in commit.files):
            result.append({"type": "directory", "oid": _folder_oid(commit.files, path), "size": 0, "path": path})
    return _json(result)


def _resolve(hub: HubServer, req: _Request, repo_id: str, revision: str, path: str):
    with hub._lock:
        repo, _ = _repo_for_read(hub, req, repo_id)
        commit = _revision(repo, revision)
    blob = commit.files.get(path)
    if blob is None:
        raise HubError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": commit.oid})
    headers = {
        "X-Repo-Commit": commit.oid,
        "ETag": f'"{blob.oid}"',
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
        "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}",
    }
    if blob.is_lfs:
        headers["X-Linked-Etag"] = f'"{blob.sha256}"'
        headers["X-Linked-Size"] = str(len(blob.data))
    data, status = blob.data, 200
    range_header = req.headers.get("Range")
    if range_header and range_header.startswith("bytes="):
        start_text, _, end_text = range_header[len("bytes=") :].split(",")[0].partition("-")
        if start_text:
            start = int(start_text)
            end = int(end_text) if end_text else len(data) - 1
        else:  # suffix range: the last N bytes
            start, end = max(0, len(data) - int(end_text)), len(data) - 1
        if start >= len(data) and len(data) > 0:
            raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
        end = min(end, len(data) - 1)
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        data, status = data[start : end + 1], 206
    return status, headers, data


# -- uploads ---------------------------------------------------------------------------


def _lfs_patterns(files: dict[str, Blob]) -> list[str]:
    attributes = files.get(".gitattributes")
    if attributes is None:
        return []
    patterns = []
    for line in attributes.data.decode("utf-8", "replace").splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#") and "filter=lfs" in fields[1:]:
            patterns.append(fields[0])
    return patterns


def _is_lfs_path(path: str, size: int, patterns: list[str]) -> bool:
    if size > LFS_SIZE_THRESHOLD:
        return True
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(path if "/" in pattern else name, pattern) for pattern in patterns)


def _branch_for_write(repo: Repo, revision: str, req: _Request) -> str:
    if req.flag("create_pr"):
        raise HubError(400, "Pull requests are not supported by this server")
    if revision not in repo.branches:
        if repo.commit(revision) is not None:
            raise HubError(400, f"Cannot commit to {revision}: not a branch")
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
    return revision


def _preupload(hub: HubServer, req: _Request, repo_id: str, revision: str):
    with hub._lock:
        repo, _ = _repo_for_write(hub, req, repo_id)
        branch = _branch_for_write(repo, revision, req)
        head = repo.head(branch)
    payload = req.json()
    files = payload.get("files")
    if not isinstance(files, list):
        raise HubError(400, '"files" must be an array')
    patterns = _lfs_patterns(head.files)
    answers = []
    for item in files:
        path, size = item.get("path"), item.get("size", 0)
        if not isinstance(path, str):
            raise HubError(400, '"path" must be a string')
        existing = head.files.get(path)
        answers.append(
            {
                "path": path,
                "uploadMode": "lfs" if _is_lfs_path(path, int(size or 0), patterns) else "regular",
                "shouldIgnore": False,
                "oid": (existing.etag if existing is not None else None),
            }
        )
    return _json({"files": answers, "commitOid": head.oid})


def _lfs_batch(hub: HubServer, req: _Request, repo_id: str):
    with hub._lock:
        _repo_for_write(hub, req, repo_id)
    payload = req.json()
    if payload.get("operation") != "upload":
        raise HubError(400, "Only the upload operation is supported")
    if "basic" not in (payload.get("transfers") or ["basic"]):
        raise HubError(400, "Only the basic transfer is supported")
    objects = []
    for obj in payload.get("objects") or []:
        oid, size = obj.get("oid"), obj.get("size")
        entry = {"oid": oid, "size": size, "authenticated": True}
        if oid not in hub.lfs_objects:
            href = f"{hub.endpoint}/lfs-objects/{oid}"
            entry["actions"] = {
                "upload": {"href": href, "header": {"Content-Type": "application/octet-stream"}},
                "verify": {"href": f"{href}/verify", "header": {}},
            }
        objects.append(entry)
    return _json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                 headers={"Content-Type": "application/vnd.git-lfs+json"})


def _lfs_put(hub: HubServer, req: _Request, oid: str):
    if hashlib.sha256(req.body).hexdigest() != oid:
        raise HubError(400, f"The uploaded content does not match its sha256 {oid}")
    with hub._lock:
        hub.lfs_objects[oid] = req.body
    return 200, {}, b""


def _lfs_verify(hub: HubServer, req: _Request, oid: str):
    payload = req.json()
    data = hub.lfs_objects.get(oid)
    if data is None or payload.get("oid") != oid:
        raise HubError(404, f"LFS object {oid} not found")
    if payload.get("size") is not None and payload["size"] != len(data):
        raise HubError(422, f"LFS object {oid} has size {len(data)}, not {payload['size']}")
    return _json({"success": True})


def _commit(hub: HubServer, req: _Request, repo_id: str, revision: str):
    lines = []
    for number, line in enumerate(req.body.splitlines(), start=1):
        if line.strip():
            try:
                lines.append(json.loads(line))
            except ValueError:
                raise HubError(400, f"Invalid JSON on line {number} of the commit payload") from None
    if not lines or lines[0].get("key") != "header":
        raise HubError(400, "The commit payload must start with a header")
    header = lines[0].get("value") or {}
    with hub._lock:
        repo, token = _repo_for_write(hub, req, repo_id)
        branch = _branch_for_write(repo, revision, req)
        head = repo.head(branch)
        parent = header.get("parentCommit")
        if parent is not None and parent != head.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        for item in lines[1:]:
            key, value = item.get("key"), item.get("value") or {}
            path = value.get("path")
            if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/"):
                raise HubError(400, f"Invalid path in commit operation: {path!r}")
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
                try:
                    data = base64.b64decode(value.get("content") or "", validate=True)
                except ValueError:
                    raise HubError(400, f"Invalid base64 content for {path}") from None
                files[path] = Blob(data)
            elif key == "lfsFile":
                oid = value.get("oid")
                data = hub.lfs_objects.get(oid)
                if data is None:
                    raise HubError(
                        400,
                        "Your push was rejected because an LFS pointer pointed to a file that does not exist. "
                        f"Offending file: - {path}",
                    )
                if value.get("size") is not None and value["size"] != len(data):
                    raise HubError(400, f"LFS file {path}: size {value['size']} does not match the object's")
                files[path] = Blob(data, is_lfs=True)
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"File not found: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                folder = path.rstrip("/") + "/"
                doomed = [p for p in files if p.startswith(folder)]
                if not doomed:
                    raise HubError(404, f"Folder not found: {path}", "EntryNotFound")
                for p in doomed:
                    del files[p]
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        if "README.md" in files and files["README.md"] is not head.files.get("README.md"):
            try:
                validate_card_metadata(files["README.md"].data.decode("utf-8"))
            except UnicodeDecodeError:
                raise HubError(400, "README.md is not valid UTF-8") from None
            except ValueError as err:
                raise HubError(400, f"Invalid metadata in README.md: {err}") from None
        commit = hub._new_commit(
            header.get("summary") or "Update files", header.get("description") or "", [head.oid], files, token.user
        )
        repo.branches[branch].append(commit)
    return _json(
        {
            "success": True,
            "commitOid": commit.oid,
            "commitUrl": f"{hub.endpoint}/{repo_id}/commit/{commit.oid}",
            "pullRequestUrl": None,
        }
    )


# --------------------------------------------------------------------------------------
# pytest fixture
# --------------------------------------------------------------------------------------


@pytest.fixture
def hub(tmp_path_factory, monkeypatch):
    """A fresh :class:`HubServer` that in-process clients and subprocesses talk to.

    Tokens: ``hf_write_token`` (user ``alice``, org ``kmeans-org``, write),
    ``hf_read_token`` (user ``bob``, read-only), ``hf_expired_token`` (user ``carol``, expired).
    No token is configured in the environment: pass ``token=`` to the client calls.
    ``HF_HOME`` is a fresh folder (so the download cache is empty), offline mode is off and
    Xet is disabled, for this process (env and ``huggingface_hub.constants``) and its children.
    """
    import huggingface_hub.constants as constants

    home = tmp_path_factory.mktemp("hf_home")
    with HubServer() as server:
        server.add_token("hf_write_token", "alice", orgs=("kmeans-org",))
        server.add_token("hf_read_token", "bob", write=False)
        server.add_token("hf_expired_token", "carol", expired=True)

        for name in (
            "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE",
            "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HF_TOKEN_PATH", "HF_XET_CACHE", "HF_MODULES_CACHE",
            "TRANSFORMERS_CACHE", "HUGGINGFACE_CO_STAGING",
        ):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_HOME", str(home))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setenv("HF_HUB_DISABLE_UPDATE_CHECK", "1")

        patched = {
            "ENDPOINT": server.endpoint,
            "HUGGINGFACE_CO_URL_TEMPLATE": server.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_HOME": str(home),
            "HF_HUB_CACHE": str(home / "hub"),
            "HUGGINGFACE_HUB_CACHE": str(home / "hub"),
            "HF_ASSETS_CACHE": str(home / "assets"),
            "HF_TOKEN_PATH": str(home / "token"),
            "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
            "HF_XET_CACHE": str(home / "xet"),
            "HF_HUB_OFFLINE": False,
            "HF_HUB_DISABLE_XET": True,
            "HF_HUB_DISABLE_TELEMETRY": True,
            "HF_HUB_DISABLE_UPDATE_CHECK": True,
        }
        for name, value in patched.items():
            if hasattr(constants, name):
                monkeypatch.setattr(constants, name, value)

        # transformers keeps a shared HfApi (built with the endpoint of its time): drop it
        transformers_hub = sys.modules.get("transformers.utils.hub")
        if transformers_hub is not None and hasattr(transformers_hub, "_hf_api"):
            monkeypatch.setattr(transformers_hub, "_hf_api", None)
        yield server
