"""create_model(..., pad_to=32): any input size, the same weights and outputs as padding by hand."""

import pytest
import torch
import torch.nn.functional as F

from vmunet import create_model


@pytest.mark.parametrize("preset", ["vmunet-tiny", "vmunet-v2-tiny"])
def test_padded_model_equals_padding_by_hand_and_cropping(preset):
    torch.manual_seed(0)
    padded = create_model(preset, num_classes=2, input_channels=1, pad_to=32).eval()
    plain = create_model(preset, num_classes=2, input_channels=1).eval()
    plain.load_state_dict(padded.state_dict(), strict=True)  # same keys: the option adds no parameter
    x = torch.randn(2, 1, 45, 70)  # (B, C, H, W), neither side a multiple of 32
    with torch.no_grad():
        got = padded(x)
        expected = plain(F.pad(x, (0, 96 - 70, 0, 64 - 45)))[:, :, :45, :70]  # bottom/right zeros, then crop
    assert got.shape == (2, 2, 45, 70)
    torch.testing.assert_close(got, expected)


def test_padding_leaves_valid_sizes_and_state_dict_keys_alone():
    torch.manual_seed(0)
    padded = create_model("vmunet-tiny", pad_to=64).eval()
    plain = create_model("vmunet-tiny").eval()
    assert list(padded.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(padded.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(padded(x), plain(x))
        assert padded(torch.randn(1, 3, 33, 20)).shape == (1, 1, 33, 20)  # padded to 64 x 64 inside


def test_pad_to_is_recorded_in_config_so_a_saved_model_rebuilds_alike():
    model = create_model("vmunet-tiny", num_classes=3, pad_to=32)
    assert model.config["pad_to"] == 32
    rebuilt = create_model("vmunet-tiny", **model.config)
    assert rebuilt.pad_to == 32
    assert "pad_to" not in create_model("vmunet-tiny").config  # run folders of unpadded models are unchanged


@pytest.mark.parametrize("bad", [16, 0, 48, True, 32.0])
def test_pad_to_must_be_a_multiple_of_32(bad):
    with pytest.raises(ValueError, match="pad_to must be a positive multiple of 32"):
        create_model("vmunet-tiny", pad_to=bad)


def test_unpadded_model_still_refuses_other_sizes_and_names_the_option():
    model = create_model("vmunet-tiny")
    with pytest.raises(ValueError, match="height 45 is not a multiple of 32.*pad_to=32"):
        model(torch.randn(1, 3, 45, 64))
