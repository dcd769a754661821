"""VM-UNetV2 and the deeper VM-UNet preset against the official code's fixtures (tests/fixtures/README.md)."""

import tempfile

import pytest
import torch

from conftest import FIXTURES, load_fixture
from vmunet import VMUNetV2, create_model, load_pretrained_vmamba
from vmunet.models.ss2d import SS2D
from vmunet.ops import available_backends


def read_tsv(name):
    """{key: shape} in file order; an empty shape field is a 0-dim tensor."""
    lines = (FIXTURES / name).read_text().splitlines()
    rows = [line.split("\t") for line in lines if line and not line.startswith("#")]
    return {key: tuple(int(s) for s in shape.split("x")) if shape else () for key, shape in rows}


def fixture_model(**changes) -> tuple[VMUNetV2, dict]:
    ref = load_fixture("v2_tiny_binary.pt")
    config = {k: v for k, v in ref["model_config"].items() if k != "depths_decoder"}  # official: accepted, unused
    model = VMUNetV2(**{**config, **changes}).eval()
    model.load_state_dict(ref["state_dict"], strict=True)
    return model, ref


def test_paper_v2_state_dict_keys_shapes_and_counts_equal_official():
    expected = read_tsv("vmunet_v2_state_dict.tsv")
    model = create_model("vmunet-v2")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(expected)  # same keys in the same order: official checkpoints load strictly
    assert ours == expected
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) == 22_770_934
    assert sum(p.numel() for n, p in params.items() if n.startswith("vmunet.layers.3.")) == 8_911_872
    # stage 3, seg_outs.0/1 and deconv5 (48*48*16) never reach the output: kept, not trained
    frozen = sum(p.numel() for p in params.values() if not p.requires_grad)
    assert frozen == 8_911_872 + 2 * (48 + 1) + 48 * 48 * 16


@pytest.mark.parametrize("backend", available_backends("cpu"))
def test_v2_logits_match_official_fixture(backend):
    model, ref = fixture_model(scan_backend=backend)
    with torch.no_grad():
        logits = model(ref["input"])
    assert logits.dtype == torch.float32 and logits.shape == ref["logits"].shape == (2, 1, 64, 64)
    torch.testing.assert_close(logits, ref["logits"], rtol=0, atol=1e-4)



def official_multiclass_shapes(num_classes: int) -> dict:
    """The official VMUNetV2(num_classes=K) state_dict, derived from the one-class table by reading the official
    class: only ``seg_outs.i = Conv2d(mid_channel, num_classes, 1)`` depends on K; ``deconv6`` is
    ConvTranspose2d(1, 1, 3) whatever K, and the encoder (VSSM, its head commented out) has no class-sized part."""
    shapes = read_tsv("vmunet_v2_state_dict.tsv")
    for i in range(4):
        mid = shapes[f"seg_outs.{i}.weight"][1]
        shapes[f"seg_outs.{i}.weight"] = (num_classes, mid, 1, 1)
        shapes[f"seg_outs.{i}.bias"] = (num_classes,)
    return shapes


def test_official_multiclass_state_dict_keys_and_shapes_equal_ours_without_deep_supervision():
    expected = official_multiclass_shapes(9)
    assert expected["deconv6.weight"] == (1, 1, 3, 3) and expected["deconv6.bias"] == (1,)
    model = create_model("vmunet-v2", num_classes=9, deep_supervision=False)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(expected) and ours == expected
    # The documented extension (deep supervision with several classes) differs in deconv6 only.
    plain = create_model("vmunet-v2-tiny", num_classes=9, deep_supervision=False).state_dict()
    grouped = create_model("vmunet-v2-tiny", num_classes=9, deep_supervision=True).state_dict()
    assert list(grouped) == list(plain)
    assert {k for k in plain if grouped[k].shape != plain[k].shape} == {"deconv6.weight", "deconv6.bias"}
    assert grouped["deconv6.weight"].shape == (9, 1, 3, 3)


def test_official_multiclass_checkpoint_loads_strictly_and_runs_on_grey_input():
    """An official-layout 4-class checkpoint (deep supervision off, as the official code requires for several
    classes): the one-class fixture's weights with 4-class heads. It loads with strict=True, takes a grey
    (B, 1, H, W) input, and class c is the one-class network (without deep supervision) with class c's head."""
    ref = load_fixture("v2_tiny_binary.pt")
    generator = torch.Generator().manual_seed(0)
    state = dict(ref["state_dict"])
    for i in range(4):
        mid = state[f"seg_outs.{i}.weight"].shape[1]
        state[f"seg_outs.{i}.weight"] = torch.randn(4, mid, 1, 1, generator=generator)
        state[f"seg_outs.{i}.bias"] = torch.randn(4, generator=generator)
    config = {k: v for k, v in ref["model_config"].items() if k != "depths_decoder"}
    multi = VMUNetV2(**{**config, "num_classes": 4, "deep_supervision": False}).eval()
    multi.load_state_dict(state, strict=True)
    grey = ref["input"][:, :1]
    with torch.no_grad():
        out = multi(grey)
        assert out.shape == (2, 4, 64, 64)
        one = VMUNetV2(**{**config, "deep_supervision": False}).eval()
        for c in range(4):
            one_state = dict(state)
            for i in range(4):
                for part in ("weight", "bias"):
                    one_state[f"seg_outs.{i}.{part}"] = state[f"seg_outs.{i}.{part}"][c:c + 1]
            one_state["deconv6.weight"], one_state["deconv6.bias"] = ref["state_dict"]["deconv6.weight"], \
                ref["state_dict"]["deconv6.bias"]
            one.load_state_dict(one_state, strict=True)
            torch.testing.assert_close(out[:, c:c + 1], one(grey.repeat(1, 3, 1, 1)), rtol=0, atol=1e-5)
    assert out.std(dim=(0, 2, 3)).min() > 0.1


@pytest.mark.parametrize("backend", available_backends("cpu"))
@pytest.mark.parametrize("input_channels", [1, 3])
def test_v2_multiclass_grey_logits_match_official_fixture(backend, input_channels):
    """v2_tiny_multiclass_grey.pt (official code: 4 classes, no deep supervision, depths [2, 1, 2, 2], d_state 8,
    a grey input), loaded strictly. The official forward repeats any one-channel input, so a model built for 3
    channels (what the official configs say for grey data) takes the grey input as well."""
    ref = load_fixture("v2_tiny_multiclass_grey.pt")
    config = {k: v for k, v in ref["model_config"].items() if k != "depths_decoder"}
    assert config["input_channels"] == 1 and ref["input"].shape == (2, 1, 64, 64)
    model = VMUNetV2(**{**config, "input_channels": input_channels, "scan_backend": backend}).eval()
    model.load_state_dict(ref["state_dict"], strict=True)
    with torch.no_grad():
        logits = model(ref["input"])
    assert logits.shape == ref["logits"].shape == (2, 4, 64, 64)
    torch.testing.assert_close(logits, ref["logits"], rtol=0, atol=1e-4)

def test_v2_tiny_preset_is_the_fixture_architecture():
    ref = load_fixture("v2_tiny_binary.pt")
    model = create_model("vmunet-v2-tiny")
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ref["state_dict"].items()}
    assert sum(p.numel() for p in model.parameters()) == 317_862


def test_stage_3_is_kept_but_never_computed():
    model, ref = fixture_model()
    calls = []
    model.vmunet.layers[3].register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        model(ref["input"])
    assert calls == []
    assert all(not p.requires_grad for p in model.vmunet.layers[3].parameters())


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_frozen_parameters_are_exactly_those_without_gradient(deep_supervision):
    """What DDP needs: every trainable parameter gets a gradient, and the frozen ones could not get one."""
    torch.manual_seed(0)
    model = create_model("vmunet-v2-tiny", num_classes=2, deep_supervision=deep_supervision, drop_path_rate=0.0)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == model.unused_parameter_names()
    model.requires_grad_(True).train()
    model(torch.randn(2, 3, 64, 64)).square().mean().backward()
    assert {n for n, p in model.named_parameters() if p.grad is None} == frozen
    assert any(n.startswith("vmunet.layers.2.") for n, p in model.named_parameters() if p.grad is not None)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@pytest.mark.filterwarnings("ignore:Grad strides do not match bucket view strides")
def test_ddp_trains_v2_without_find_unused_parameters():
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    assert not dist.is_initialized()
    with tempfile.TemporaryDirectory() as folder:
        dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=0, world_size=1)
        try:
            model = create_model("vmunet-v2-tiny")
            network = DistributedDataParallel(model)  # as vmunet.train wraps it
            optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
            for _ in range(2):  # with a trainable unused parameter the second forward raises
                network(torch.randn(2, 3, 32, 32)).mean().backward()
                optimizer.step()
                optimizer.zero_grad()
        finally:
            dist.destroy_process_group()


def symmetrise_for_transposition(model: VMUNetV2) -> None:
    """Weights under which the network commutes with swapping H and W: every conv kernel symmetric, the
    row-major scan directions' parameters equal to the column-major ones', and patch merging's (1,0) and (0,1)
    neighbour blocks equal."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                module.weight.copy_((module.weight + module.weight.transpose(-1, -2)) / 2)
            if isinstance(module, SS2D):
                for name in ("x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds"):
                    p = getattr(module, name)
                    k = p.view(4, -1)  # (K, ...): the four scan directions
                    k[1].copy_(k[0])
                    k[3].copy_(k[2])
        for layer in model.vmunet.layers[:-1]:
            merge = layer.downsample
            c = merge.reduction.weight.shape[1] // 4
            merge.reduction.weight[:, 2 * c:3 * c].copy_(merge.reduction.weight[:, c:2 * c])
            for p in (merge.norm.weight, merge.norm.bias):
                p[2 * c:3 * c].copy_(p[c:2 * c])


def test_non_square_input_is_handled_per_axis():
    """The official SDI reads only the width (square inputs only). Ours sizes height and width separately: with
    weights that make the network transposition-symmetric, model(x^T) must equal model(x)^T for a 64x96 input,
    which fails when any resize, scan or merge confuses the two axes."""
    model, ref = fixture_model()
    symmetrise_for_transposition(model)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
        out_t = model(x.transpose(-1, -2).contiguous())
        square = model(ref["input"])
        square_t = model(ref["input"].transpose(-1, -2).contiguous())
    assert out.shape == (2, 1, 64, 96) and out_t.shape == (2, 1, 96, 64)
    torch.testing.assert_close(out_t, out.transpose(-1, -2), rtol=0, atol=1e-4)
    torch.testing.assert_close(square_t, square.transpose(-1, -2), rtol=0, atol=1e-4)  # the symmetry is real
    assert out.std() > 0.1  # not a constant map


def test_without_deep_supervision_the_output_is_the_last_head_only():
    model, ref = fixture_model()
    plain, _ = fixture_model(deep_supervision=False)  # same weights: the state_dict does not change
    with torch.no_grad():
        model.deconv6.weight.zero_()
        model.deconv6.bias.zero_()
        last_head = model(ref["input"])
        out = plain(ref["input"])
    torch.testing.assert_close(out, last_head, rtol=0, atol=1e-6)
    assert (out - ref["logits"]).abs().max() > 0.1  # the deep-supervision term was not zero


def test_deep_supervision_for_several_classes_applies_the_one_class_rule_per_class():
    """The documented extension: class c of a K-class model equals a one-class model with class c's heads."""
    torch.manual_seed(0)
    multi = create_model("vmunet-v2-tiny", num_classes=3).eval()
    assert multi.deconv6.weight.shape == (3, 1, 3, 3)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = multi(x)
        assert out.shape == (2, 3, 64, 64)
        for c in range(3):
            one = create_model("vmunet-v2-tiny", num_classes=1).eval()
            state = multi.state_dict()
            for key in ("seg_outs.2.weight", "seg_outs.2.bias", "seg_outs.3.weight", "seg_outs.3.bias",
                        "deconv6.weight", "deconv6.bias"):
                state[key] = state[key][c:c + 1]
            for key in ("seg_outs.0.weight", "seg_outs.0.bias", "seg_outs.1.weight", "seg_outs.1.bias"):
                state[key] = state[key][:1]
            one.load_state_dict(state, strict=True)
            torch.testing.assert_close(out[:, c:c + 1], one(x), rtol=0, atol=1e-5)


def test_one_channel_input_is_repeated_to_rgb():
    model, ref = fixture_model()
    grey = VMUNetV2(input_channels=1, mid_channel=8, dims=(16, 32, 64, 128), depths=(1, 1, 1, 1)).eval()
    grey.load_state_dict(model.state_dict(), strict=True)  # the stem stays 3-channel
    x = ref["input"][:, :1]
    with torch.no_grad():
        torch.testing.assert_close(grey(x), model(x.repeat(1, 3, 1, 1)), rtol=0, atol=0)


def test_v2_configuration_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"mid_channel 8 gives \[16, 32, 64, 128\], but dims are \[96, 192"):
        VMUNetV2(mid_channel=8)
    with pytest.raises(ValueError, match="4 encoder stages"):
        VMUNetV2(depths=(2, 2, 9))
    with pytest.raises(ValueError, match="unknown model option.*depths_decoder.*'vmunet-v2'"):
        create_model("vmunet-v2", depths_decoder=(2, 9, 2, 2))
    with pytest.raises(ValueError, match="height 48 is not a multiple of 32"):
        create_model("vmunet-v2-tiny")(torch.randn(1, 3, 48, 64))


def test_v2_pretrained_loading_is_encoder_only():
    """The official VMUNetV2.load_from: checkpoint keys by name into the encoder, nothing else. The expected keys
    and values come from the official VM-UNet rule's fixture, whose encoder part is the same rule."""
    expected = load_fixture("pretrained_loading_expected.pt")
    assert expected["model_config"]["depths"] == [2, 2, 2, 2] and expected["model_config"]["dims"] == [16, 32, 64, 128]
    torch.manual_seed(0)
    model = VMUNetV2(mid_channel=8, dims=(16, 32, 64, 128), depths=(2, 2, 2, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_pretrained_vmamba(model, FIXTURES / "fake_vmamba_pretrained.pth")
    encoder_keys = sorted(k for k in expected["loaded_keys"] if not k.startswith("vmunet.layers_up."))
    assert sorted(report.loaded) == encoder_keys
    state = model.state_dict()
    for key in encoder_keys:
        torch.testing.assert_close(state[key], expected["state_dict_after_loading"][key], rtol=0, atol=0)
    for key in state:
        if key not in encoder_keys:
            assert torch.equal(state[key], before[key]), key


def test_deeper_vmunet_preset_is_the_official_class_default():
    """vmunet-deep: encoder [2, 2, 9, 2], decoder [2, 9, 2, 2]; the paper model's keys (decoder [2, 2, 2, 1]) plus
    7 blocks in encoder stage 2 and decoder stage 1 (dim 384) and 1 in decoder stage 3 (dim 96), each shaped like
    the paper model's first block there."""
    paper = read_tsv("vmunet_isic_state_dict.tsv")
    model = create_model("vmunet-deep")
    assert model.config["depths"] == [2, 2, 9, 2] and model.config["depths_decoder"] == [2, 9, 2, 2]
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: ours[k] for k in paper} == paper
    extra = {k: s for k, s in ours.items() if k not in paper}

    def block(stage):
        prefix = f"vmunet.{stage}.blocks.0."
        return {k[len(prefix):]: s for k, s in paper.items() if k.startswith(prefix)}

    expected = {}
    for stage, new_blocks in (("layers.2", range(2, 9)), ("layers_up.1", range(2, 9)), ("layers_up.3", [1])):
        expected.update({f"vmunet.{stage}.blocks.{b}.{name}": s for b in new_blocks
                         for name, s in block(stage).items()})
    assert extra == expected
    size = {stage: sum(torch.Size(s).numel() for s in block(stage).values()) for stage in ("layers.2", "layers_up.3")}
    assert sum(p.numel() for p in model.parameters()) == 27_427_561 + 14 * size["layers.2"] + size["layers_up.3"]
