"""models.durable: atomic text writes leave the old file or the new one, never a part, and no
temporary file behind."""

import os

import pytest

from models.durable import fsync_directory, fsync_tree, write_text_atomically


def test_write_text_atomically_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    write_text_atomically(path, "first")
    assert write_text_atomically(path, "second, longer") == path
    assert path.read_text() == "second, longer"
    assert sorted(os.listdir(tmp_path)) == ["summary.json"]


def test_a_write_that_fails_midway_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_text_atomically(path, "old")

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomically(path, "new")
    assert path.read_text() == "old"


def test_fsync_tree_walks_files_and_directories(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_bytes(b"x")
    fsync_tree(tmp_path)  # real fsyncs on a real tree: no error on files or directories
    fsync_directory(tmp_path / "a")
    with pytest.raises(FileNotFoundError):
        fsync_directory(tmp_path / "missing")
