"""The command line itself: every command registered, loud import failures, `vmunet forward`, Ctrl-C."""

import argparse
import signal
import subprocess
import sys

import pytest

import vmunet.cli as cli
from builders import UTF8_TEXT, make_isic

COMMANDS = {"train", "evaluate", "cv", "predict", "export", "serve", "demo", "forward", "info", "nnunet"}


def commands(parser: argparse.ArgumentParser) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_every_command_is_there_and_a_broken_import_fails_loudly(monkeypatch, capsys):
    """cli.py used to swallow an ImportError of cli_apply, and predict/export then vanished ("invalid choice")."""
    monkeypatch.setitem(sys.modules, "vmunet.cli_apply", None)  # the old home of predict/export: unimportable
    assert commands(cli.build_parser()) == COMMANDS
    monkeypatch.setitem(sys.modules, "vmunet.predict", None)  # a broken module behind a command
    code = cli.main(["predict", "--run-dir", "run", "image.png", "--out", "out"])
    err = capsys.readouterr().err
    assert code == 2 and "vmunet predict: error:" in err and "vmunet.predict" in err


def test_forward_prints_shapes_and_time(capsys):
    assert cli.main(["forward", "--model", "vmunet-tiny", "--image-size", "64", "--num-classes", "2"]) == 0
    out = capsys.readouterr().out
    assert "vmunet-tiny: input (1, 3, 64, 64) -> logits (1, 2, 64, 64) in" in out and "CPU threads" in out


def test_forward_rejects_a_bad_size_in_one_line(capsys):
    assert cli.main(["forward", "--model", "vmunet-tiny", "--image-size", "100"]) == 2
    assert "not a multiple of 32" in capsys.readouterr().err


def test_ctrl_c_during_training_exits_130_and_says_how_to_resume(tmp_path):
    """A real SIGINT to `vmunet train` once it is training: status 130, one line, --resume named."""
    data = make_isic(tmp_path / "data", counts={"train": 8, "val": 2})
    command = [sys.executable, "-m", "vmunet", "train", "--preset", "isic18", "--model", "vmunet-tiny",
               "--image-size", "32", "--epochs", "1000", "--batch-size", "2", "--no-progress", "--data", str(data),
               "--run-dir", str(tmp_path / "run")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **UTF8_TEXT)
    try:
        for line in process.stdout:  # the first epoch line: the command is inside its try block
            if line.startswith("epoch 1/"):
                break
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "vmunet train: interrupted" in err and "--resume" in err
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()  # the finished epoch is kept


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["predict", "--help"], ["export", "--help"]])
def test_help_texts(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0 and "usage: vmunet" in capsys.readouterr().out
