"""The command line itself: every command registered, loud import failures, `vmunet forward`, Ctrl-C."""

import argparse
import signal
import subprocess
import sys

import pytest

import vmunet.cli as cli
from builders import HANG_LIMIT_S, UTF8_TEXT, make_isic, read_until

COMMANDS = {"train", "evaluate", "cv", "predict", "export", "serve", "demo", "forward", "info", "nnunet"}


def commands(parser: argparse.ArgumentParser) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


# Each command's own module, imported when the command runs; the argv reaches that import first.
COMMAND_MODULES = [
    (["predict", "--run-dir", "run", "image.png", "--out", "out"], "vmunet.predict"),
    (["evaluate", "--run-dir", "run"], "vmunet.evaluate"),
    (["cv", "run0", "run1", "--out", "out"], "vmunet.cv"),
    (["serve", "--run-dir", "run"], "vmunet.serve"),
    (["demo", "--quick"], "vmunet.demo"),
    (["info", "--model", "vmunet-tiny"], "vmunet.model_info"),
    (["nnunet", "trainer-dir"], "vmunet.integrations.nnunet_launcher"),
]


@pytest.mark.parametrize("argv, module", COMMAND_MODULES, ids=[argv[0] for argv, _ in COMMAND_MODULES])
def test_every_command_is_there_and_a_broken_import_fails_loudly(monkeypatch, capsys, argv, module):
    """cli.py used to swallow an ImportError of the module behind predict/export, which then vanished ("invalid
    choice"): with the module unimportable, the command is still listed and running it is one error naming it."""
    monkeypatch.setitem(sys.modules, module, None)  # unimportable: `import` raises ImportError
    assert commands(cli.build_parser()) == COMMANDS
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and f"vmunet {argv[0]}: error:" in err and module in err, err


@pytest.mark.parametrize("module", ["vmunet.export", "vmunet.train", "vmunet.ops"])
def test_a_broken_module_the_parser_or_main_needs_stops_every_command_loudly(monkeypatch, module):
    """export's formats, train's error class and the scan backends are read before any command runs."""
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=module.replace(".", r"\.")):
        cli.main(["info", "--model", "vmunet-tiny"])


def test_the_command_table_covers_every_command():
    named = {argv[0] for argv, _ in COMMAND_MODULES}
    assert named | {"train", "export", "forward"} == COMMANDS  # those three: the test above and test_forward_*


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
        read_until(process, "epoch 1/")  # the event: the first epoch is done and the command is in its try block
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=HANG_LIMIT_S)  # a hang guard only: the exit is the event
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
