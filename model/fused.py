"""An inference-only rewrite of :class:`ResidualBiLSTM` with one fused LSTM call per block.

A block's ``n_residual`` layers all read the same input, and each direction's LSTM is small, so
on a CPU the cost is dominated by the number of LSTM calls (2 × n_residual per block), not by
arithmetic. Packing the layers side by side into one (bidirectional) ``nn.LSTM`` with
block-diagonal weights computes exactly the same function in one call per block:

    dense:  [W_fw_1; ...; W_fw_k; W_bw_1; ...; W_bw_k]       one Linear, then ReLU
    LSTM:   forward direction = k forward LSTMs side by side (block-diagonal, zeros elsewhere)
            reverse direction = k backward LSTMs side by side
    sum:    Σ_j [h_fw_j ; h_bw_j]                             the residual sum of the layers

The zeros cost k× the recurrent arithmetic, which is far cheaper than k× the calls at these widths.
"""

from __future__ import annotations

import torch
from torch import nn

from model.network import BiLSTMLayer, ResidualBiLSTM, ResidualBlock


def _gate_blocks(weights: list[torch.Tensor], h: int) -> list[list[torch.Tensor]]:
    """Split each LSTM's (4h, ...) tensor into its i, f, g, o gate rows."""
    return [[w[g * h : (g + 1) * h] for g in range(4)] for w in weights]


def _pack_direction(lstms: list[nn.LSTM], h: int, n_in_total: int, in_offset: int) -> dict[str, torch.Tensor]:
    """Weights of one direction of the fused LSTM from k separate single-direction LSTMs."""
    k = len(lstms)
    w_ih = torch.zeros(4 * k * h, n_in_total)
    w_hh = torch.zeros(4 * k * h, k * h)
    b_ih = torch.zeros(4 * k * h)
    b_hh = torch.zeros(4 * k * h)
    ih = _gate_blocks([m.weight_ih_l0.detach() for m in lstms], h)
    hh = _gate_blocks([m.weight_hh_l0.detach() for m in lstms], h)
    bi = _gate_blocks([m.bias_ih_l0.detach() for m in lstms], h)
    bh = _gate_blocks([m.bias_hh_l0.detach() for m in lstms], h)
    for j in range(k):
        cols = slice(in_offset + j * h, in_offset + (j + 1) * h)
        for g in range(4):
            rows = slice(g * k * h + j * h, g * k * h + (j + 1) * h)
            w_ih[rows, cols] = ih[j][g]
            w_hh[rows, j * h : (j + 1) * h] = hh[j][g]
            b_ih[rows] = bi[j][g]
            b_hh[rows] = bh[j][g]
    return {"w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh}


class FusedBlock(nn.Module):
    def __init__(self, block: ResidualBlock) -> None:
        super().__init__()
        layers: list[BiLSTMLayer] = list(block.layers)
        self.k = len(layers)
        self.bidirectional = layers[0].backward_dir is not None
        self.h = layers[0].forward_dir.lstm.hidden_size
        dirs = [[layer.forward_dir for layer in layers]]
        if self.bidirectional:
            dirs.append([layer.backward_dir for layer in layers])
        denses = [d.dense for direction in dirs for d in direction]
        self.dense = nn.Linear(denses[0].in_features, len(denses) * self.h)
        self.lstm = nn.LSTM(len(denses) * self.h, self.k * self.h, batch_first=True,
                            bidirectional=self.bidirectional)
        with torch.no_grad():
            self.dense.weight.copy_(torch.cat([d.weight for d in denses]))
            self.dense.bias.copy_(torch.cat([d.bias for d in denses]))
            n_in = len(denses) * self.h
            for suffix, direction, offset in (("", 0, 0), ("_reverse", 1, self.k * self.h)):
                if direction >= len(dirs):
                    continue
                packed = _pack_direction([d.lstm for d in dirs[direction]], self.h, n_in, offset)
                getattr(self.lstm, f"weight_ih_l0{suffix}").copy_(packed["w_ih"])
                getattr(self.lstm, f"weight_hh_l0{suffix}").copy_(packed["w_hh"])
                getattr(self.lstm, f"bias_ih_l0{suffix}").copy_(packed["b_ih"])
                getattr(self.lstm, f"bias_hh_l0{suffix}").copy_(packed["b_hh"])
        self.norm = block.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(torch.relu(self.dense(x)))  # (B, T, dirs * k * h)
        b, t, _ = y.shape
        y = y.view(b, t, 2 if self.bidirectional else 1, self.k, self.h).sum(dim=3)  # residual sum
        return self.norm(y.reshape(b, t, -1))


class FusedResidualBiLSTM(nn.Module):
    """Same outputs as the :class:`ResidualBiLSTM` it was built from (to float rounding)."""

    def __init__(self, model: ResidualBiLSTM) -> None:
        super().__init__()
        self.config = model.config
        self.register_buffer("feature_mean", model.feature_mean.detach().clone())
        self.register_buffer("feature_std", model.feature_std.detach().clone())
        self.blocks = nn.ModuleList(FusedBlock(block) for block in model.blocks)
        self.classifier = model.classifier
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (x - self.feature_mean) / self.feature_std
        for block in self.blocks:
            h = block(h)
        return self.classifier(h[:, -1])


def fuse(model: ResidualBiLSTM) -> FusedResidualBiLSTM:
    return FusedResidualBiLSTM(model.eval())
