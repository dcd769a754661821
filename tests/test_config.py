"""Presets equal PAPER.md's protocols; overrides and bad configuration fail early and clearly."""

import pytest

from vmunet.config import build_config, parse_override, preset_names


@pytest.mark.parametrize("preset", ["isic17", "isic18"])
def test_isic_presets_match_paper(preset):
    c = build_config(preset)
    assert (c.dataset, c.num_classes, c.input_channels, c.image_size) == ("isic", 1, 3, 256)
    assert (c.epochs, c.batch_size, c.lr, c.betas, c.weight_decay) == (300, 32, 1e-3, (0.9, 0.999), 1e-2)
    assert (c.t_max, c.eta_min, c.augmentation) == (50, 1e-5, "isic")
    assert c.model == "vmunet"


def test_synapse_preset_matches_paper():
    c = build_config("synapse")
    assert (c.dataset, c.num_classes, c.input_channels, c.image_size) == ("synapse", 9, 1, 224)
    assert (c.epochs, c.batch_size, c.lr, c.betas, c.weight_decay) == (300, 32, 1e-3, (0.9, 0.999), 1e-2)
    assert (c.t_max, c.eta_min, c.augmentation) == (100, 1e-5, "synapse")
    assert c.label_names == ["background", "aorta", "gallbladder", "left kidney", "right kidney", "liver",
                             "pancreas", "spleen", "stomach"]


def test_presets_fix_the_defects_by_default():
    for name in preset_names():
        c = build_config(name)
        assert not c.paper_selection and not c.paper_weight_decay


def test_override_order_preset_file_flags_set(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("epochs: 7\nlr: 0.01\n")
    c = build_config("isic18", file, {"epochs": 5, "batch_size": None}, ["lr=5e-4", "betas=[0.8, 0.9]"])
    assert (c.epochs, c.lr, c.betas, c.batch_size) == (5, 5e-4, (0.8, 0.9), 32)


def test_bad_configuration_is_rejected_with_a_reason(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'isic19'; choose one of folders, isic17, isic18, nifti, "
                                         "nnunet, polyp, synapse"):
        build_config("isic19")
    with pytest.raises(ValueError, match="unknown config key\\(s\\) learning_rate"):
        build_config("isic18", sets=["learning_rate=0.1"])
    with pytest.raises(ValueError, match="epochs must be an integer \\(got 'ten'\\)"):
        build_config("isic18", sets=["epochs=ten"])
    with pytest.raises(ValueError, match="image_size must be a positive multiple of 32 \\(got 250; try 224\\)"):
        build_config("isic18", overrides={"image_size": 250})
    with pytest.raises(ValueError, match="max_steps_per_epoch must be >= 1 or null \\(got 0\\)"):
        build_config("isic18", sets=["max_steps_per_epoch=0"])
    with pytest.raises(ValueError, match="lr must be > 0"):
        build_config("isic18", sets=["lr=0"])
    with pytest.raises(ValueError, match="--set expects key=value"):
        parse_override("lr")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        build_config("isic18", bad)
    with pytest.raises(FileNotFoundError, match="nope.yaml: config file not found"):
        build_config("isic18", tmp_path / "nope.yaml")
