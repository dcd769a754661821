"""The registry of dataset layouts: every dataset with a folder has one, and the README's smallest layout works
once it is registered (``vmunet.data.splits`` asks the registry, no switch on the name)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import vmunet.config
from vmunet.config import TrainConfig
from vmunet.data import layouts
from vmunet.data.splits import evaluation_cases, prepare_training_data, training_case_names, training_cases
from vmunet.data.subsets import volume_id

from builders import make_isic

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_dataset_read_from_a_folder_has_a_layout():
    assert set(layouts.LAYOUTS) == set(vmunet.config.DATASETS) - {"demo"}  # the demo builds its data in memory
    assert all(name == layout.name and layout.protocol in ("images", "volumes", "polyp")
               for name, layout in layouts.LAYOUTS.items())


@pytest.fixture()
def readme_layout(monkeypatch):
    """The README's example layout, registered as its paragraph says (one registry entry, the name in DATASETS)."""
    readme = README.read_text(encoding="utf-8")
    code = re.search(r"```python\n(# src/vmunet/data/layouts/skin\.py\n.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "skin.py", "exec"), namespace)
    monkeypatch.setattr(vmunet.config, "DATASETS", (*vmunet.config.DATASETS, "skin"))
    return namespace["Skin"]()


def test_the_readme_layout_is_one_module_and_one_registry_line(readme_layout, monkeypatch, tmp_path):
    root = make_isic(tmp_path / "skin", counts={"train": 6, "test": 2}, size=(16, 16))
    config = TrainConfig(dataset="skin", data=str(root), val_fraction=0.34, seed=3).validate()
    with pytest.raises(ValueError, match="dataset 'skin' has no folder reader"):
        prepare_training_data(config)  # not registered yet: splits knows no name of its own

    monkeypatch.setitem(layouts.LAYOUTS, "skin", readme_layout)
    data = prepare_training_data(config)
    held = sorted(data.val.case_ids)
    assert len(data.train) + len(data.val) == 6 and len(held) == 2  # round(0.34 * 6) images held out
    assert sorted(data.train.case_ids + held) == training_case_names(config, None)
    kind, test = evaluation_cases(config, None, "test")
    assert kind == "images" and sorted(test.case_ids) == ["ISIC_test00000", "ISIC_test00001"]
    kind, val = evaluation_cases(config, None, "val")
    assert sorted(val.case_ids) == held  # selection images, never the test folder
    kind, chosen = training_cases(config, None, list(reversed(held)))
    assert [volume_id(c) for c in chosen.case_ids] == list(reversed(held))
