"""The local Hub server (tests/hub_server.py), driven with the real huggingface_hub and transformers clients."""

import base64
import json
import os
import subprocess
import sys
import textwrap

import httpx2
import numpy as np
import pytest
from huggingface_hub import HfApi, ModelCard, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    BadRequestError,
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from hub_server import hub  # noqa: F401
from safetensors.numpy import save_file

WRITE, READ, EXPIRED = "hf_write_token", "hf_read_token", "hf_expired_token"

GOOD_README = """\
---
license: apache-2.0
library_name: transformers
tags:
- clustering
model-index:
- name: tiny
  results:
  - task: {type: clustering}
    dataset: {type: synthetic, name: Gaussian mixture}
    metrics:
    - {type: ari, value: 0.98}
---
# Tiny model
"""

BAD_README = """\
---
license: apache-2.0
model-index:
- name: tiny
  results:
  - task: {type: clustering}
    dataset: {type: synthetic, name: Gaussian mixture}
    metrics:
    - {value: 0.98}
---
# Tiny model
"""


def make_folder(path, readme=GOOD_README):
    path.mkdir()
    (path / "notes.txt").write_text("hello hub\n")
    (path / "README.md").write_text(readme)
    weights = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)  # 1 MiB
    save_file({"weights": weights}, str(path / "model.safetensors"))
    return path


def run_python(code, **env):
    """Run `code` in a fresh interpreter with this process's environment plus `env`."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_create_repo_and_visibility(hub):
    api = HfApi(token=WRITE)
    url = api.create_repo("alice/public")
    assert url == f"{hub.endpoint}/alice/public" and url.repo_id == "alice/public"
    info = api.model_info("alice/public")
    assert info.id == "alice/public" and len(info.sha) == 40 and not info.private
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]
    assert HfApi(token=False).model_info("alice/public").sha == info.sha  # anonymous read of a public repo

    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("alice/public")
    assert err.value.response.status_code == 409 and "already created" in str(err.value)
    assert api.create_repo("alice/public", exist_ok=True).repo_id == "alice/public"

    api.create_repo("kmeans-org/secret", private=True)  # an org of alice's
    assert api.model_info("kmeans-org/secret").private
    for other in (HfApi(token=READ), HfApi(token=False)):
        with pytest.raises(RepositoryNotFoundError):
            other.model_info("kmeans-org/secret")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("kmeans-org/secret", ".gitattributes", token=False)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/missing")

    assert api.whoami()["name"] == "alice"
    assert HfApi(token=READ).whoami()["auth"]["accessToken"]["role"] == "read"
    api.delete_repo("alice/public")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/public")


def test_upload_download_snapshot_and_offline(hub, tmp_path):
    api = HfApi(token=WRITE)
    api.create_repo("alice/tiny")
    folder = make_folder(tmp_path / "tiny")
    commit = api.upload_folder(repo_id="alice/tiny", folder_path=folder, commit_message="Upload tiny")
    assert len(commit.oid) == 40

    paths = [method_path[1] for method_path in hub.requests]
    assert "/alice/tiny.git/info/lfs/objects/batch" in paths
    assert any(p.startswith("/lfs-objects/") for p in paths)
    assert not any("xet" in p for p in paths)
    pushed = hub.files("alice/tiny")
    assert set(pushed) == {".gitattributes", "notes.txt", "README.md", "model.safetensors"}
    commit_obj = hub.repos["alice/tiny"].head("main")
    assert commit_obj.files["model.safetensors"].is_lfs and not commit_obj.files["notes.txt"].is_lfs

    info = api.model_info("alice/tiny", files_metadata=True)
    assert info.sha == commit.oid and info.card_data.license == "apache-2.0"
    lfs = {s.rfilename: s.lfs for s in info.siblings}
    assert lfs["model.safetensors"].size == (folder / "model.safetensors").stat().st_size and lfs["notes.txt"] is None
    tree = {f.path for f in api.list_repo_tree("alice/tiny", recursive=True)}
    assert tree == set(pushed)

    for name in ("notes.txt", "README.md", "model.safetensors"):
        with open(hf_hub_download("alice/tiny", name), "rb") as f:
            assert f.read() == (folder / name).read_bytes()
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("alice/tiny", "missing.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("alice/tiny", "notes.txt", revision="nope")

    snapshot = snapshot_download("alice/tiny")
    assert sorted(os.listdir(snapshot)) == sorted(pushed)

    # offline, in a fresh process sharing the cache: served from it, the server sees nothing
    seen = len(hub.requests)
    out = run_python(
        """
        from huggingface_hub import hf_hub_download, snapshot_download
        print(open(hf_hub_download("alice/tiny", "notes.txt")).read().strip())
        print(snapshot_download("alice/tiny"))
        """,
        HF_HUB_OFFLINE="1",
    )
    assert out.splitlines() == ["hello hub", snapshot]
    assert len(hub.requests) == seen

    # a second commit moves `main`; the first one stays readable by its oid
    api.upload_file(path_or_fileobj=b"v2\n", path_in_repo="notes.txt", repo_id="alice/tiny")
    assert hub.files("alice/tiny")["notes.txt"] == b"v2\n"
    assert hub.files("alice/tiny", commit.oid)["notes.txt"] == b"hello hub\n"


def test_invalid_metadata_is_rejected(hub, tmp_path):
    api = HfApi(token=WRITE)
    api.create_repo("alice/bad")
    with pytest.raises(ValueError, match=r"metrics\[0\]\.type") as err:
        api.upload_folder(repo_id="alice/bad", folder_path=make_folder(tmp_path / "bad", readme=BAD_README))
    assert isinstance(err.value.__cause__, BadRequestError)  # the server's 400
    assert set(hub.files("alice/bad")) == {".gitattributes"}

    # the commit endpoint itself rejects an invalid README (clients that skip validate-yaml)
    payload = [
        {"key": "header", "value": {"summary": "bad card"}},
        {"key": "file", "value": {"path": "README.md", "encoding": "base64",
                                  "content": base64.b64encode(b"---\ntags: 3\n---\n").decode()}},
    ]
    response = httpx2.post(
        f"{hub.endpoint}/api/models/alice/bad/commit/main",
        content="".join(json.dumps(line) + "\n" for line in payload),
        headers={"Authorization": f"Bearer {WRITE}", "Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 400 and "tags" in response.json()["error"]

    ModelCard(GOOD_README).validate()
    with pytest.raises(ValueError, match=r"metrics\[0\]\.value"):
        ModelCard(GOOD_README.replace("value: 0.98", "value: [0.98]")).validate()
    with pytest.raises(ValueError, match="library_name"):
        ModelCard("---\nlibrary_name: [a]\n---\ntext\n").validate()


def test_tokens(hub, tmp_path):
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token=EXPIRED).create_repo("carol/x")
    assert err.value.response.status_code == 401 and "expired" in str(err.value)
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token="hf_unknown").create_repo("alice/x")
    assert err.value.response.status_code == 401 and "Invalid credentials" in str(err.value)
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token=READ).create_repo("bob/x")
    assert err.value.response.status_code == 403 and 'namespace "bob"' in str(err.value)
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token=WRITE).create_repo("someone-else/x")
    assert err.value.response.status_code == 403 and "rights" in str(err.value)

    HfApi(token=WRITE).create_repo("alice/shared")
    folder = make_folder(tmp_path / "f")
    for token in (READ, EXPIRED):
        with pytest.raises(HfHubHTTPError) as err:
            HfApi(token=token).upload_folder(repo_id="alice/shared", folder_path=folder)
        assert err.value.response.status_code == (403 if token == READ else 401)
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token=False).upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="alice/shared")
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token=EXPIRED).whoami()
    assert err.value.response.status_code == 401
    assert set(hub.files("alice/shared")) == {".gitattributes"}


def test_branches_and_revisions(hub):
    api = HfApi(token=WRITE)
    api.create_repo("alice/branchy")
    first = api.upload_file(path_or_fileobj=b"main\n", path_in_repo="which.txt", repo_id="alice/branchy")
    api.create_branch("alice/branchy", branch="dev")
    with pytest.raises(HfHubHTTPError) as err:
        api.create_branch("alice/branchy", branch="dev")
    assert err.value.response.status_code == 409
    api.create_branch("alice/branchy", branch="dev", exist_ok=True)
    second = api.upload_file(path_or_fileobj=b"dev\n", path_in_repo="which.txt", repo_id="alice/branchy",
                             revision="dev")

    def read(revision):
        with open(hf_hub_download("alice/branchy", "which.txt", revision=revision)) as f:
            return f.read()

    assert read("main") == read(first.oid) == "main\n"
    assert read("dev") == read(second.oid) == "dev\n"
    assert api.model_info("alice/branchy", revision="dev").sha == second.oid
    assert {b.name for b in api.list_repo_refs("alice/branchy").branches} == {"main", "dev"}
    with pytest.raises(HfHubHTTPError) as err:  # `first` is no longer the head of dev
        api.upload_file(path_or_fileobj=b"late\n", path_in_repo="which.txt", repo_id="alice/branchy",
                        revision="dev", parent_commit=first.oid)
    assert err.value.response.status_code == 412
    api.upload_file(path_or_fileobj=b"on time\n", path_in_repo="which.txt", repo_id="alice/branchy",
                    revision="dev", parent_commit=second.oid)
    assert hub.files("alice/branchy", "dev")["which.txt"] == b"on time\n"


def test_failure_injection(hub, tmp_path):
    api = HfApi(token=WRITE)
    api.create_repo("alice/flaky")
    folder = make_folder(tmp_path / "f")
    hub.fail_next("/commit/", status=500, message="storage is on fire")
    with pytest.raises(HfHubHTTPError, match="storage is on fire"):
        api.upload_folder(repo_id="alice/flaky", folder_path=folder)
    assert set(hub.files("alice/flaky")) == {".gitattributes"}
    api.upload_folder(repo_id="alice/flaky", folder_path=folder)  # the failure was used up
    assert "model.safetensors" in hub.files("alice/flaky")


def test_transformers_remote_code_round_trip(hub, tmp_path):
    """A remote-code model pushed to the server loads with AutoModel, online then offline."""
    from kmeans_transformer import KMeansTransformerConfig, KMeansTransformerModel

    model = KMeansTransformerModel(KMeansTransformerConfig(num_clusters=3, point_dim=2, num_iterations=2))
    model.save_pretrained(tmp_path / "model")
    api = HfApi(token=WRITE)
    api.create_repo("kmeans-org/tiny-kmeans")
    api.upload_folder(repo_id="kmeans-org/tiny-kmeans", folder_path=tmp_path / "model")

    load = """
        import transformers
        config = transformers.AutoConfig.from_pretrained("kmeans-org/tiny-kmeans", trust_remote_code=True)
        model = transformers.AutoModel.from_pretrained("kmeans-org/tiny-kmeans", trust_remote_code=True)
        print(type(model).__name__, config.num_clusters)
    """
    seen = len(hub.requests)
    assert run_python(load).split() == ["KMeansTransformerModel", "3"]
    online = hub.requests[seen:]
    assert not any("xet" in path for _, path in online)

    seen = len(hub.requests)
    assert run_python(load, HF_HUB_OFFLINE="1").split() == ["KMeansTransformerModel", "3"]
    assert len(hub.requests) == seen


def test_commit_rejects_missing_lfs_object(hub):
    HfApi(token=WRITE).create_repo("alice/lfs")
    payload = [
        {"key": "header", "value": {"summary": "dangling pointer"}},
        {"key": "lfsFile", "value": {"path": "model.safetensors", "algo": "sha256", "oid": "0" * 64, "size": 3}},
    ]
    response = httpx2.post(
        f"{hub.endpoint}/api/models/alice/lfs/commit/main",
        content="".join(json.dumps(line) + "\n" for line in payload),
        headers={"Authorization": f"Bearer {WRITE}", "Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 400 and "model.safetensors" in response.json()["error"]
    assert set(hub.files("alice/lfs")) == {".gitattributes"}
