"""Outputs that belong together (cv's three files, evaluate's summary and table) are published all or none,
each writer through temporary names of its own."""

import json
import os

import pytest

from vmunet import evaluate
from vmunet.io import files as io_files
from vmunet.io.files import publish_together

NAMES = ("per_case.csv", "summary.json", "postprocessing.json")


def write(text):
    return lambda path: path.write_text(text)


def fail_on_publishing(monkeypatch, failing_call: int):
    """os.replace raises on its ``failing_call``-th move into place (counting from 1); the staging is real."""
    calls = []
    real = os.replace

    def replace(source, destination):
        calls.append(destination)
        if len(calls) == failing_call:
            raise OSError(28, "No space left on device")
        return real(source, destination)

    monkeypatch.setattr(io_files.os, "replace", replace)
    return calls


@pytest.mark.parametrize("links", ["hard links", "no hard links"])
def test_a_failure_mid_publish_restores_every_previous_file_and_leaves_nothing_new(tmp_path, monkeypatch, links):
    if links == "no hard links":  # a file system without them (some network and FUSE mounts): copies are kept
        def no_link(source, destination):
            raise OSError(1, "Operation not permitted")

        monkeypatch.setattr(io_files.os, "link", no_link)
    for name in NAMES[:2]:
        (tmp_path / name).write_text(f"old {name}")
    (tmp_path / "mine.txt").write_text("the user's")
    calls = fail_on_publishing(monkeypatch, failing_call=3)  # two files already moved into place
    with pytest.raises(OSError, match="cannot write per_case.csv, summary.json, postprocessing.json .*No space"):
        publish_together(tmp_path, {name: write(f"new {name}") for name in NAMES})
    assert len(calls) >= 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt", *sorted(NAMES[:2])]  # no staging left
    assert [(tmp_path / name).read_text() for name in NAMES[:2]] == [f"old {name}" for name in NAMES[:2]]


def test_a_failure_while_writing_leaves_the_folder_as_it_was(tmp_path):
    (tmp_path / "summary.json").write_text("old")

    def broken(path):
        path.write_text("half")
        raise RuntimeError("the writer broke")

    with pytest.raises(RuntimeError, match="the writer broke"):
        publish_together(tmp_path, {"per_case.csv": write("new"), "summary.json": broken})
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    assert (tmp_path / "summary.json").read_text() == "old"


def test_publishing_replaces_every_file_and_keeps_the_others(tmp_path):
    (tmp_path / "summary.json").write_text("old")
    (tmp_path / "mine.txt").write_text("the user's")
    publish_together(tmp_path / ".", {name: write(f"new {name}") for name in NAMES})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*NAMES, "mine.txt"])
    assert [(tmp_path / name).read_text() for name in NAMES] == [f"new {name}" for name in NAMES]


def evaluation(label: str, write_rows) -> dict:
    return {"summary": {"who": label}, "rows": [label], "class_names": ["background", "lesion"],
            "write_per_case_csv": write_rows}


def test_two_evaluations_into_one_folder_never_share_a_temporary_file(tmp_path):
    """Evaluation A writes its table; evaluation B runs from start to end before A moves its table into place
    (two processes with one --out). A fixed temporary name made B overwrite A's half-published file and A's
    move fail; each must instead publish its own files whole."""
    out = tmp_path / "eval"

    def rows_of_b(path, rows, names):
        path.write_text(f"table {rows[0]}\n")

    def rows_of_a(path, rows, names):
        path.write_text(f"table {rows[0]}\n")
        evaluate.write_evaluation(tmp_path, evaluation("B", rows_of_b), out)  # B, entirely, meanwhile
        assert path.read_text() == "table A\n"  # B did not write into A's file

    evaluate.write_evaluation(tmp_path, evaluation("A", rows_of_a), out)
    # the last to publish (A) wins, with both of its files: never A's summary beside B's table
    assert json.loads((out / "summary.json").read_text()) == {"who": "A"}
    assert (out / "per_case.csv").read_text() == "table A\n"
    assert sorted(p.name for p in out.iterdir()) == ["per_case.csv", "summary.json"]
