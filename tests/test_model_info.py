"""vmunet info (issue 15): parameters against the official state_dict tables, MACs by hand, the JSON keys."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import FIXTURES
from vmunet.cli import main
from vmunet.model_info import MacCount, count_macs, parameter_counts, selective_scan_macs, ss2d_macs
from vmunet.models import create_model
from vmunet.models.ss2d import SS2D

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def official_parameter_count(name: str) -> int:
    """The parameters of an official state_dict table: every tensor but BatchNorm's buffers."""
    total = 0
    for line in (FIXTURES / name).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape = line.split("\t")
        if not key.endswith(BUFFERS):
            total += math.prod(int(s) for s in shape.split("x")) if shape else 1
    return total


def run_info(capsys, *args) -> dict:
    assert main(["info", "--image-size", "32", "--repeats", "1", "--json", *map(str, args)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("table, options", [
    ("vmunet_isic_state_dict.tsv", {"num_classes": 1}),
    ("vmunet_synapse_state_dict.tsv", {"num_classes": 9, "input_channels": 1}),
])
def test_info_counts_the_parameters_of_the_vmunet_tables(table, options):
    """The counting that `vmunet info` does (its forward is left to the V2 test below: CPU time)."""
    expected = official_parameter_count(table)
    assert expected in (27_427_561, 27_427_761)  # the tables' own stated counts
    by_part, not_computed = parameter_counts(create_model("vmunet", **options))
    assert sum(by_part.values()) == expected and not_computed == 0
    assert set(by_part) == {"encoder", "decoder", "head"} and all(count > 0 for count in by_part.values())


def test_info_counts_the_parameters_of_the_v2_table(capsys):
    expected = official_parameter_count("vmunet_v2_state_dict.tsv")
    assert expected == 22_770_934  # the table's own stated count
    info = run_info(capsys, "--model", "vmunet-v2", "--scan-backend", "torch")
    assert info["parameters"] == expected == sum(info["parameters_by_part"].values())
    assert all(count > 0 for count in info["parameters_by_part"].values())
    # stage 3, seg_outs.0/1, deconv5: kept for official checkpoints, never computed; the official forward runs stage 3
    assert info["parameters_not_computed"] == 8_911_872 + 2 * (48 + 1) + 48 * 48 * 16
    assert info["official_extra_macs"] > 0
    assert sum(info["macs_by_part"].values()) == sum(info["macs_by_kind"].values())


def test_info_json_keys_and_their_relations(capsys):
    info = run_info(capsys, "--model", "vmunet-tiny", "--scan-backend", "torch")
    assert {"parameters", "gmacs", "scan_gmacs", "gmacs_without_scan", "forward_seconds"} <= set(info)
    kinds = info["macs_by_kind"]
    assert info["gmacs"] == pytest.approx(sum(kinds.values()) / 1e9)
    assert info["scan_gmacs"] == pytest.approx(kinds["selective_scan"] / 1e9) and info["scan_gmacs"] > 0
    assert info["gmacs_without_scan"] == pytest.approx(info["gmacs"] - info["scan_gmacs"])
    assert info["scan_backend"] == "torch" and len(info["forward_seconds"]) == 1 and info["forward_seconds"][0] > 0
    assert info["input_shape"] == [1, 3, 32, 32]


def test_info_on_a_size_that_is_no_multiple_of_32_is_one_line(capsys):
    assert main(["info", "--model", "vmunet-tiny", "--image-size", "48"]) == 2
    assert capsys.readouterr().err.strip() == ("vmunet info: error: input height 48 is not a multiple of 32; resize "
                                               "or pad to 32 or 64 (or build the model with pad_to=32)")


def test_selective_scan_macs_by_hand_and_by_vmambas_einsum_counting():
    """B=1, D=8 channels, L=6, N=2: delta x A 1*8*6*2 = 96 products -> 48; delta*B*u 2 x 96 -> 96; the
    recurrence 96; the readout 96; the skip 48: 48 + 96 + 96 + 96 + 48 = 384 = 3.5 * 96 + 48."""
    assert selective_scan_macs(1, 8, 6, 2) == 384
    assert selective_scan_macs(2, 8, 6, 2) == 2 * 384  # linear in the batch

    def half_flops(equation, *shapes):  # numpy's FLOP count of an einsum, halved (VMamba's MAC convention)
        report = np.einsum_path(equation, *[np.zeros(s) for s in shapes], optimize="optimal")[1]
        line = next(row for row in report.splitlines() if "optimized flop" in row.lower())
        return math.floor(float(line.split(":")[-1]) / 2)

    b, d, length, n = 1, 8, 6, 2
    counted = (half_flops("bdl,dn->bdln", (b, d, length), (d, n))
               + half_flops("bdl,bnl,bdl->bdln", (b, d, length), (b, n, length), (b, d, length))
               + length * (b * d * n + half_flops("bdn,bdn->bd", (b, d, n), (b, d, n))) + b * d * length)
    assert counted == selective_scan_macs(b, d, length, n)


def test_ss2d_macs_by_hand():
    """SS2D(d_model 4, d_state 2): d_inner 8, dt_rank ceil(4/16) = 1, 4 directions -> 32 scan channels.
    On a (1, 2, 3, 4) input (6 positions): in_proj Linear(4 -> 16): 6*16 outputs x 4 = 384; depthwise 3x3 conv:
    48 outputs x 1 x 9 = 432; out_norm LayerNorm(8): 48 x 2 = 96; out_proj Linear(8 -> 4): 24 x 8 = 192;
    projections 6 x 4 x ((1 + 2*2) * 8 + 8 * 1) = 1152; scan 3.5 * 32*6*2 + 32*6 = 1536."""
    module = SS2D(d_model=4, d_state=2, scan_backend="torch").eval()
    assert ss2d_macs(module, 1, 2, 3) == (1152, 1536)
    count = count_macs(module, torch.randn(1, 2, 3, 4))
    assert count.by_kind == {"conv": 432, "linear": 384 + 192, "norm": 96, "ss2d_projections": 1152,
                             "selective_scan": 1536}
    assert count.by_part == {"model": count.total}


class ConvLinearToy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False)
        self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)
        self.fc = nn.Linear(200, 3)

    def forward(self, x):  # (1, 2, 5, 5)
        x = self.up(torch.relu(self.grouped(self.conv(x))))  # (1, 2, 10, 10)
        return self.fc(x.flatten(1))


def test_conv_and_linear_macs_of_a_toy_model_by_hand():
    """conv: 4*5*5 outputs x 2 inputs x 9 = 1800; grouped (2 groups): 100 outputs x 2 x 9 = 1800; transposed:
    100 inputs x 2 outputs x 2x2 = 800; linear: 3 outputs x 200 = 600. Biases and the ReLU are not counted."""
    count = count_macs(ConvLinearToy(), torch.randn(1, 2, 5, 5))
    assert isinstance(count, MacCount)
    assert count.by_kind == {"conv": 1800 + 1800 + 800, "linear": 600, "norm": 0, "ss2d_projections": 0,
                             "selective_scan": 0}


def test_info_text_shows_the_json_figures(capsys):
    figures = run_info(capsys, "--model", "vmunet-tiny", "--scan-backend", "torch")
    assert main(["info", "--model", "vmunet-tiny", "--image-size", "32", "--repeats", "1",
                 "--scan-backend", "torch"]) == 0
    text = capsys.readouterr().out
    assert f"parameters: {figures['parameters']:,}" in text
    total = sum(figures["macs_by_kind"].values())
    assert f"multiply-accumulates: {total / 1e6:.3f} MMACs, selective scan included" in text  # tiny: in MMACs
    assert f"selective_scan{figures['macs_by_kind']['selective_scan'] / 1e6:>18.3f}" in text
    assert "scan backend torch" in text and "3.5*B*D*L*N + B*D*L" in text
