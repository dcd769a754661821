"""SS2D: the 2D selective-scan mixer of a VSS block (four scan directions, summed)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vmunet.ops import check_backend_name
from vmunet.ops.ss2d_scan import DIRECTIONS, ss2d_scan


class SS2D(nn.Module):
    """(B, H, W, d_model) -> (B, H, W, d_model); parameter names and shapes as the official SS2D."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 3, expand: int = 2,
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 scan_backend: str = "auto"):
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.scan_backend = check_backend_name(scan_backend)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv2d = nn.Conv2d(self.d_inner, self.d_inner, kernel_size=d_conv, padding=(d_conv - 1) // 2,
                                groups=self.d_inner, bias=True)
        k, d, r, n = DIRECTIONS, self.d_inner, self.dt_rank, d_state
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, d))  # (K, dt_rank + 2N, d_inner)
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d, r))  # (K, d_inner, dt_rank)
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d))  # (K, d_inner)
        self.A_logs = nn.Parameter(torch.empty(k * d, n))  # (K * d_inner, N)
        self.Ds = nn.Parameter(torch.empty(k * d))  # (K * d_inner)
        self.out_norm = nn.LayerNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.reset_ssm_parameters(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
        """The official initialisation of the scan parameters (Linear layers are set by the model)."""
        # x_proj: nn.Linear's default (uniform +-1/sqrt(fan_in)); dt_proj weight: uniform +-dt_rank^-0.5.
        bound = 1.0 / math.sqrt(self.d_inner)
        self.x_proj_weight.uniform_(-bound, bound)
        std = self.dt_rank ** -0.5
        self.dt_projs_weight.uniform_(-std, std)
        # dt bias: softplus(bias) log-uniform in [dt_min, dt_max]; inverse softplus of dt.
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real: A = -(1..N), stored as its log; skip D = 1.
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d_inner, H, W) -> (B, d_inner, H*W): the four directional selective scans, merged."""
        return ss2d_scan(x, self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias, self.A_logs, self.Ds,
                         backend=self.scan_backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)  # (B, H, W, d_inner) each
        # The depthwise conv reads the channels-last view as it is and writes channels-last, which the fused scan
        # reads and writes too: no transposed copy on either side (the plain path makes its own copies).
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))  # (B, d_inner, H, W), channels-last memory
        y = self.scan(x).transpose(1, 2).reshape(B, H, W, -1)  # (B, H, W, d_inner), float32
        y = self.out_norm(y) * F.silu(z)
        return self.out_proj(y)
