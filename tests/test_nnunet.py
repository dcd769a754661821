"""VM-UNet inside nnU-Net v2 (vmunet.integrations.nnunet, `vmunet nnunet`): a tiny dataset made here is planned,
trained for two iterations with a subclass of the tiny trainer, and predicted, all with nnU-Net's own commands."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from builders import UTF8_TEXT, make_nnunet, organ_volume

pytest.importorskip("nnunetv2", reason="nnU-Net v2 is not installed (pip install 'vmunet[nnunet]')")

from vmunet.integrations.nnunet_launcher import trainer_dir  # noqa: E402 (after the skip)

DATASET = "Dataset991_VMUNetToy"
QUICK_TRAINER = textwrap.dedent("""
    import torch

    from vmunet.integrations.nnunet import nnUNetTrainerVMUNetTiny


    class nnUNetTrainerVMUNetTinyQuick(nnUNetTrainerVMUNetTiny):
        # the way nnU-Net's own variants are written: only the schedule changes
        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = 1
            self.num_iterations_per_epoch = 2
            self.num_val_iterations_per_epoch = 1
""")


def run_vmunet(args, env, check=True):
    result = subprocess.run([sys.executable, "-m", "vmunet", *args], env=env, capture_output=True, **UTF8_TEXT)
    if check and result.returncode != 0:
        raise AssertionError(f"vmunet {' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


def run_python(code, env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, **UTF8_TEXT)


@pytest.fixture(scope="module")
def nnunet_env(tmp_path_factory):
    """nnU-Net's three folders, a planned and preprocessed 2D dataset, and a folder of the user's own trainers."""
    root = tmp_path_factory.mktemp("nnunet")
    raw = make_nnunet(root / "raw" / DATASET, train_cases=5, test_cases=0, shape=(40, 36, 3))
    image, _ = organ_volume(np.random.default_rng(5), 3, 45, 38, num_classes=3)  # (Z, X, Y), no side a multiple of 8
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.moveaxis(image * 100, 0, -1).astype(np.float32), np.diag([0.9, 0.8, 2.0, 1.0])),
             str(raw / "imagesTs" / "odd_000_0000.nii.gz"))
    own = root / "own_trainers"
    own.mkdir()
    (own / "quick_trainers.py").write_text(QUICK_TRAINER)
    env = {**os.environ, "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
           "nnUNet_results": str(root / "results"), "nnUNet_def_n_proc": "1", "nnUNet_extTrainer": str(own)}
    run_vmunet(["nnunet", "plan_and_preprocess", "-d", "991", "-c", "2d", "-np", "1", "-npfp", "1"], env)
    return root, env


def test_train_and_predict_with_nnunets_commands_through_the_launcher(nnunet_env):
    root, env = nnunet_env
    env = {**env, "nnUNet_n_proc_DA": "0"}  # augmentation in the main process: no worker processes in the suite
    run_vmunet(["nnunet", "train", "991", "2d", "0", "-tr", "nnUNetTrainerVMUNetTinyQuick", "-device", "cpu"], env)
    fold = root / "results" / DATASET / "nnUNetTrainerVMUNetTinyQuick__nnUNetPlans__2d" / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == "nnUNetTrainerVMUNetTinyQuick"
    assert checkpoint["current_epoch"] == 1  # the subclass's num_epochs = 1 was used
    weights = checkpoint["network_weights"]
    # VM-UNet's own (official) keys: the network nnU-Net trained is the tiny VM-UNet, with 3 output classes
    assert weights["vmunet.final_conv.weight"].shape == (3, 4, 1, 1)
    assert "vmunet.patch_embed.proj.weight" in weights and not any(k.startswith("encoder.") for k in weights)
    assert (fold / "validation" / "summary.json").is_file()  # nnU-Net's own validation ran on the VM-UNet

    out = root / "predicted"
    run_vmunet(["nnunet", "predict", "-i", str(root / "raw" / DATASET / "imagesTs"), "-o", str(out), "-d", "991",
                "-c", "2d", "-f", "0", "-tr", "nnUNetTrainerVMUNetTinyQuick", "-chk", "checkpoint_final.pth",
                "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta"], env)
    import nibabel as nib

    source = nib.load(str(root / "raw" / DATASET / "imagesTs" / "odd_000_0000.nii.gz"))
    labels = nib.load(str(out / "odd_000.nii.gz"))
    assert labels.shape == source.shape == (45, 38, 3)  # 40 x 40 patches, padded to 64 x 64 inside the network
    np.testing.assert_allclose(labels.affine, source.affine)
    assert set(np.unique(np.asarray(labels.dataobj))) <= {0, 1, 2}


def test_stock_nnunet_search_finds_the_trainer_in_trainer_dir(nnunet_env):
    """nnU-Net's own lookup with nnUNet_extTrainer=$(vmunet nnunet trainer-dir). It imports all of nnU-Net's
    trainers first; where torchvision cannot be imported (timm, used by its primus trainers, needs it) that
    fails before our folder is reached, which is what `vmunet nnunet` is for."""
    _, env = nnunet_env
    printed = run_vmunet(["nnunet", "trainer-dir"], env).stdout.strip()
    assert Path(printed) == trainer_dir() and (trainer_dir() / "vmunet_trainers.py").is_file()
    env = {**env, "nnUNet_extTrainer": printed}
    probe = run_python("""
        import torchvision
    """, env)
    if probe.returncode != 0:
        pytest.skip(f"torchvision cannot be imported here ({probe.stderr.strip().splitlines()[-1]}), so nnU-Net's "
                    "own trainer search fails before nnUNet_extTrainer: the launcher test covers this setup")
    result = run_python("""
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        from vmunet.integrations.nnunet import nnUNetTrainerVMUNet
        assert recursive_find_trainer_class_by_name("nnUNetTrainerVMUNet") is nnUNetTrainerVMUNet
    """, env)
    assert result.returncode == 0, result.stderr[-3000:]


def test_nnunets_external_folder_search_finds_our_trainers():
    """The step of nnU-Net's lookup that reads nnUNet_extTrainer, with nnU-Net's own arguments, on trainer-dir."""
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    from vmunet.integrations import nnunet

    folder = str(trainer_dir())
    for name in ("nnUNetTrainerVMUNet", "nnUNetTrainerVMUNetV2", "nnUNetTrainerVMUNetTiny"):
        found = recursive_find_python_class(folder, name, None, base_folder=folder, verbose=False,
                                            cleanup_imports_from_base_folder=True)
        assert found is getattr(nnunet, name)


def test_launcher_searches_our_folders_before_nnunets_trainers(nnunet_env):
    """Our trainers and the user's (nnUNet_extTrainer) are found without importing nnU-Net's trainer variants
    (whose imports break without torchvision); nnU-Net's own trainers still resolve through its search."""
    _, env = nnunet_env
    result = run_python("""
        import sys
        from vmunet.integrations.nnunet_launcher import search_our_trainers_first
        search_our_trainers_first()
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find
        import nnunetv2.run.run_training as run_training
        assert run_training.recursive_find_trainer_class_by_name is find
        from vmunet.integrations.nnunet import nnUNetTrainerVMUNetV2
        assert find("nnUNetTrainerVMUNetV2") is nnUNetTrainerVMUNetV2
        quick = find("nnUNetTrainerVMUNetTinyQuick")
        assert quick.__name__ == "nnUNetTrainerVMUNetTinyQuick" and quick.vmunet_preset == "vmunet-tiny"
        assert not any(name.startswith("nnunetv2.training.nnUNetTrainer.variants") for name in sys.modules)
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        assert find("nnUNetTrainer") is nnUNetTrainer
    """, env)
    assert result.returncode == 0, result.stderr[-3000:]


LOAD_PLANS = f"""
        import json, os, sys
        import torch
        preprocessed = os.path.join(os.environ["nnUNet_preprocessed"], "{DATASET}")
        plans = json.load(open(os.path.join(preprocessed, "nnUNetPlans.json")))
        plans["continue_training"] = False  # nnU-Net's run_training adds this before building a trainer
        dataset_json = json.load(open(os.path.join(preprocessed, "dataset.json")))
"""


def test_a_3d_configuration_is_one_clear_error(nnunet_env):
    _, env = nnunet_env
    result = run_python(LOAD_PLANS + """
        from vmunet.integrations.nnunet import nnUNetTrainerVMUNetTiny
        assert len(plans["configurations"]["3d_fullres"]["patch_size"]) == 3
        try:
            nnUNetTrainerVMUNetTiny(plans, "3d_fullres", 0, dataset_json, device=torch.device("cpu"))
        except ValueError as error:
            print(error)
    """, env)
    assert ("nnUNetTrainerVMUNetTiny trains 2D networks only; configuration '3d_fullres' has 3D patches [3, "
            in result.stdout), result.stderr[-3000:]
    assert result.stdout.rstrip().endswith(": use '2d'")
    result = run_vmunet(["nnunet", "train", "991", "3d_fullres", "0", "-tr", "nnUNetTrainerVMUNetTiny",
                         "-device", "cpu"], env, check=False)
    assert result.returncode == 2
    assert "vmunet nnunet: error: nnUNetTrainerVMUNetTiny trains 2D networks only" in result.stderr
    assert "Traceback" not in result.stderr


def test_network_is_the_preset_padded_to_32_without_deep_supervision(nnunet_env):
    _, env = nnunet_env
    result = run_python(LOAD_PLANS + """
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        from vmunet.integrations.nnunet import nnUNetTrainerVMUNetTiny, nnUNetTrainerVMUNetV2
        from vmunet.models import VMUNet, VMUNetV2

        trainer = nnUNetTrainerVMUNetTiny(plans, "2d", 0, dataset_json, device=torch.device("cpu"))
        assert trainer.enable_deep_supervision is False
        trainer.set_deep_supervision_enabled(True)  # nnU-Net calls it around validation: nothing to switch
        manager = PlansManager(plans)
        config = manager.get_configuration("2d")
        network = nnUNetTrainerVMUNetV2.build_network_architecture(manager, config, 1, 3, enable_deep_supervision=True)
        assert isinstance(network, VMUNetV2) and network.pad_to == 32 and network.config["dims"][0] == 96
        assert network.input_channels == 1 and network.num_classes == 3
        tiny = nnUNetTrainerVMUNetTiny.build_network_architecture(manager, config, 2, 3)
        assert isinstance(tiny, VMUNet) and tiny.config["dims"][0] == 16
        patch = tuple(config.patch_size)  # nnU-Net's 2D patch, not a multiple of 32 here
        assert any(side % 32 for side in patch), patch
        with torch.no_grad():
            out = tiny.eval()(torch.randn(2, 2, *patch))
        assert out.shape == (2, 3, *patch), out.shape  # one tensor, not a deep-supervision list

        # vmamba_checkpoint: weights loaded into the network nnU-Net built (a trained VM-UNet's, all by name)
        torch.manual_seed(1)
        start = nnUNetTrainerVMUNetTiny.build_network_architecture(manager, config, 1, 3).state_dict()
        os.makedirs(os.environ["nnUNet_results"], exist_ok=True)
        torch.save(start, os.path.join(os.environ["nnUNet_results"], "start.pt"))

        class Pretrained(nnUNetTrainerVMUNetTiny):
            vmamba_checkpoint = os.path.join(os.environ["nnUNet_results"], "start.pt")

        plans["continue_training"] = False  # the first trainer popped it
        trainer = Pretrained(plans, "2d", 0, dataset_json, device=torch.device("cpu"))
        trainer.initialize()
        loaded = trainer.network.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in start.items())
        print("checked")
    """, env)
    assert result.stdout.rstrip().endswith("checked"), result.stderr[-3000:]


def test_trainer_module_names_the_extra_when_nnunet_is_missing():
    code = """
        import sys
        sys.modules["nnunetv2"] = None  # as if not installed
        try:
            import vmunet.integrations.nnunet
        except ImportError as error:
            print(error)
    """
    result = run_python(code, dict(os.environ))
    assert "pip install 'vmunet[nnunet]'" in result.stdout, result.stderr[-2000:]


def test_launcher_without_nnunet_is_one_line_naming_the_extra(monkeypatch, capsys):
    from vmunet.cli import main

    monkeypatch.setitem(sys.modules, "nnunetv2", None)  # as if not installed
    assert main(["nnunet", "train", "991", "2d", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vmunet nnunet: error: vmunet nnunet needs nnU-Net v2") and "'vmunet[nnunet]'" in err
    assert main(["nnunet", "trainer-dir"]) == 0  # needs nothing of nnU-Net
    assert capsys.readouterr().out.strip() == str(trainer_dir())
