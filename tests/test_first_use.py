"""First use: a model name that looks like a local path never goes to the Hub; a missing one is a one-line error."""

import time

import pytest

from kmeans_transformer import KMeans, KMeansTransformerConfig, KMeansTransformerModel


@pytest.mark.parametrize("name", ["nope/", "./missing", "../missing", "a/b/c", "~/no-such-checkpoint"])
def test_a_missing_local_path_is_refused_at_once(name, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a request would fail slowly, with another message
    started = time.monotonic()
    with pytest.raises(OSError, match="does not exist"):
        KMeansTransformerModel.from_pretrained(name)
    with pytest.raises(OSError, match="does not exist"):
        KMeans.from_pretrained(name)
    assert time.monotonic() - started < 5


def test_a_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"")
    with pytest.raises(OSError, match="is a file, not a checkpoint directory"):
        KMeansTransformerModel.from_pretrained(path)


def test_an_existing_directory_loads_whatever_its_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = KMeansTransformerModel(KMeansTransformerConfig(num_clusters=2, point_dim=2, num_iterations=1))
    model.save_pretrained("plain")
    assert KMeansTransformerModel.from_pretrained("plain").config.num_clusters == 2
    assert KMeansTransformerModel.from_pretrained("./plain/").config.point_dim == 2
