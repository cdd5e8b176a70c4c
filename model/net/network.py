"""The deep residual bidirectional LSTM of Zhao, Yang, Chevalier and Gong (2017, arXiv 1708.08989).

    window (B, T, C) ─ normalise ─ dropout ─▶ block 1 ─▶ ... ─▶ block n_stacked
                     ─ readout ─ dropout ─ dense ─▶ logits

readout: the last step (the seed's) or the mean over the window's steps (``NetworkConfig.readout``).

    block(x) = norm( Σ_{i < n_residual} BiLSTM_i(x) )      every BiLSTM_i reads the same block input
    BiLSTM(x) = [ LSTM_fw(relu(W_fw x)) ; reverse(LSTM_bw(relu(W_bw reverse(x)))) ]   (concatenated)

Every window starts from a zero LSTM state (nn.LSTM's default when no state is passed), so a
window's prediction depends on that window alone.
"""

from __future__ import annotations

import torch
from torch import nn

# The sizes live with the other experiment settings, where the live path reads them without torch.
from model.config import NetworkConfig


class DenseLSTM(nn.Module):
    """One direction: a ReLU dense layer, then a fused LSTM over the whole window."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)
        self.lstm = nn.LSTM(n_out, n_out, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, n_in) -> (B, T, n_out)
        y, _ = self.lstm(torch.relu(self.dense(x)))
        return y


class BiLSTMLayer(nn.Module):
    """Forward and backward directions, each with its own dense layer, outputs concatenated."""

    def __init__(self, n_in: int, n_hidden: int, bidirectional: bool) -> None:
        super().__init__()
        assert not bidirectional or n_hidden % 2 == 0, f"n_hidden must be even, got {n_hidden}"
        n_dir = n_hidden // 2 if bidirectional else n_hidden
        self.forward_dir = DenseLSTM(n_in, n_dir)
        self.backward_dir = DenseLSTM(n_in, n_dir) if bidirectional else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, n_in) -> (B, T, n_hidden)
        y = self.forward_dir(x)
        if self.backward_dir is None:
            return y
        back = self.backward_dir(x.flip(1)).flip(1)
        return torch.cat([y, back], dim=-1)


class ResidualBlock(nn.Module):
    """``n_residual`` bi-LSTM layers over the same input, summed, then normalised.

    LayerNorm stands in for the seed's batch norm: it computes the same function in training and
    inference and does not depend on which windows share a batch, which batched live inference
    needs.
    """

    def __init__(self, n_in: int, n_hidden: int, n_residual: int, bidirectional: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(BiLSTMLayer(n_in, n_hidden, bidirectional) for _ in range(n_residual))
        self.norm = nn.LayerNorm(n_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers[0](x)
        for layer in self.layers[1:]:
            y = y + layer(x)
        return self.norm(y)


class Readout(nn.Module):
    """What the classifier reads of the last block's (B, T, H) output: the final step or the mean."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, H)
        return h.mean(dim=1) if self.kind == "mean" else h[:, -1]


class ResidualBiLSTM(nn.Module):
    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        # Training statistics of the features; set once from the training windows, saved in the
        # state_dict so that a checkpoint alone rebuilds what the network sees.
        self.register_buffer("feature_mean", torch.zeros(config.n_inputs))
        self.register_buffer("feature_std", torch.ones(config.n_inputs))
        self.input_dropout = nn.Dropout(config.dropout)
        widths = [config.n_inputs] + [config.n_hidden] * config.n_stacked
        self.blocks = nn.ModuleList(
            ResidualBlock(n_in, config.n_hidden, config.n_residual, config.bidirectional)
            for n_in in widths[:-1]
        )
        self.readout = Readout(config.readout)  # no parameters: the state_dict is the same either way
        self.output_dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.n_hidden, config.n_classes)

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, n_classes) for windows (B, T, n_inputs)."""
        assert x.dim() == 3 and x.shape[-1] == self.config.n_inputs, (
            f"expected (batch, time, {self.config.n_inputs}), got {tuple(x.shape)}"
        )
        h = self.input_dropout((x - self.feature_mean) / self.feature_std)
        for block in self.blocks:
            h = block(h)
        return self.classifier(self.output_dropout(self.readout(h)))

    def weight_parameters(self) -> list[nn.Parameter]:
        """Weights but not biases or norm gains: what the seed's L2 penalty covers."""
        return [p for name, p in self.named_parameters() if p.dim() > 1 and "weight" in name]
