"""Outputs appear complete or not at all; an output that overlaps an input is refused."""

import os

import pytest

from kmeans_transformer.files import refuse_overlap, replacing_directory, replacing_file


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("previous")
    with pytest.raises(RuntimeError), replacing_file(target, overwrite=True) as temporary:
        temporary.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "previous" and os.listdir(tmp_path) == ["out.csv"]
    with replacing_file(target, overwrite=True) as temporary:
        temporary.write_text("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["out.csv"]
    with pytest.raises(FileExistsError, match="overwrite"), replacing_file(target):
        pass


def test_a_symlink_is_replaced_never_followed(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("keep")
    link = tmp_path / "out.csv"
    link.symlink_to(secret)
    with pytest.raises(FileExistsError):
        with replacing_file(link):
            pass
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "elsewhere" / "x.csv")
    with pytest.raises(FileExistsError):
        with replacing_file(dangling):
            pass
    with replacing_file(link, overwrite=True) as temporary:
        temporary.write_text("new")
    assert secret.read_text() == "keep" and not link.is_symlink() and link.read_text() == "new"


def test_a_directory_is_replaced_whole_and_only_when_complete(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    for name in ("part-0-of-3", "part-1-of-3", "part-2-of-3"):
        (target / name).write_text("old")
    with pytest.raises(KeyboardInterrupt), replacing_directory(target, overwrite=True) as temporary:
        (temporary / "part-0-of-1").write_text("half")
        raise KeyboardInterrupt
    assert sorted(os.listdir(target)) == ["part-0-of-3", "part-1-of-3", "part-2-of-3"]
    assert os.listdir(tmp_path) == ["run"]
    with replacing_directory(target, overwrite=True) as temporary:
        (temporary / "part-0-of-1").write_text("new")
    assert os.listdir(target) == ["part-0-of-1"] and os.listdir(tmp_path) == ["run"]
    with pytest.raises(FileExistsError, match="not empty"), replacing_directory(target):
        pass


def test_outputs_that_overlap_inputs_are_refused(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("x\n1\n")
    with pytest.raises(ValueError, match="would overwrite the input"):
        refuse_overlap(tmp_path / "." / "data.csv", [data])
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    with pytest.raises(ValueError, match="would overwrite the input"):
        refuse_overlap(dataset / "labels", [dataset])
    with pytest.raises(ValueError, match="would overwrite the input"):
        refuse_overlap(tmp_path, [dataset])
    refuse_overlap(tmp_path / "other.csv", [data, dataset, None])
