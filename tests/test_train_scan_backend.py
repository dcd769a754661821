"""Which scan backend a training runs on: one precedence rule for its two spellings, and the run folder's record."""

from types import SimpleNamespace

import pytest
import yaml

import vmunet.cli as cli
import vmunet.ops as ops
from builders import make_isic
from vmunet.config import build_config
from vmunet.runtime.run_folder import read_run_info
from vmunet.train import train


def test_scan_backend_flag_and_set_are_one_level_and_a_conflict_is_an_error(tmp_path, capsys):
    data = make_isic(tmp_path / "data", counts={"train": 4, "val": 1})
    run_dir = tmp_path / "run"
    argv = ["train", "--preset", "isic18", "--data", str(data), "--run-dir", str(run_dir), "--no-progress"]
    code = cli.main([*argv, "--scan-backend", "torch", "--set", "scan_backend=ref"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not run_dir.exists()
    assert err == ("vmunet train: error: --set scan_backend=ref conflicts with --scan-backend torch; "
                   "give scan_backend once")
    # Either spelling alone sets the config key; both with one value agree.
    assert build_config("isic18", overrides={"scan_backend": "torch"}).scan_backend == "torch"
    assert build_config("isic18", sets=["scan_backend=ref"]).scan_backend == "ref"
    assert build_config("isic18", overrides={"scan_backend": "ref"}, sets=["scan_backend=ref"]).scan_backend == "ref"
    with pytest.raises(ValueError, match="--set epochs=3 conflicts with --epochs 5"):  # the same rule for every key
        build_config("isic18", overrides={"epochs": 5}, sets=["epochs=3"])


def test_cli_flag_reaches_the_config_of_the_run(monkeypatch, tmp_path):
    seen = []

    def fake_train(config, run_dir, **kwargs):
        seen.append(config)
        return SimpleNamespace(best_epoch=1, run_dir=tmp_path)

    monkeypatch.setattr("vmunet.train.train", fake_train)
    assert cli.main(["train", "--preset", "isic18", "--run-dir", str(tmp_path), "--scan-backend", "ref"]) == 0
    assert cli.main(["train", "--preset", "isic18", "--run-dir", str(tmp_path)]) == 0
    assert [config.scan_backend for config in seen] == ["ref", "auto"]


def test_run_json_records_the_backend_auto_resolved_to(tmp_path, monkeypatch):
    data = make_isic(tmp_path / "data", counts={"train": 4, "val": 1})
    config = build_config("isic18", overrides={"data": str(data), "model": "vmunet-tiny", "epochs": 1,
                                               "batch_size": 2, "image_size": 32, "max_steps_per_epoch": 1})
    assert config.scan_backend == "auto"
    calls = []
    ref = ops.BACKENDS["ref"]
    monkeypatch.setitem(ops.BACKENDS, "ref", lambda *a, **k: calls.append(1) or ref(*a, **k))
    with ops.use_backend("ref"):  # what `auto` means in this process (as `vmunet train --scan-backend ref`)
        train(config, tmp_path / "run", progress=False, echo=lambda *a: None)
    assert calls  # the training did run on it
    assert read_run_info(tmp_path / "run").scan_backend == "ref"
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["scan_backend"] == "auto"  # as asked
