import pytest
import torch

from model.net.network import NetworkConfig, ResidualBiLSTM


@pytest.mark.parametrize(
    ("n_stacked", "n_residual", "bidirectional"), [(1, 1, True), (3, 3, True), (2, 2, False), (3, 3, False)]
)
@pytest.mark.parametrize("steps", [24, 128])
def test_logits_have_one_row_per_window_and_one_column_per_class(n_stacked, n_residual, bidirectional, steps):
    config = NetworkConfig(n_inputs=9, n_classes=6, n_stacked=n_stacked, n_residual=n_residual,
                           bidirectional=bidirectional)  # fmt: skip
    model = ResidualBiLSTM(config).eval()
    assert model(torch.randn(4, steps, 9)).shape == (4, 6)
    assert len(model.blocks) == n_stacked
    assert all(len(block.layers) == n_residual for block in model.blocks)


def test_opportunity_sized_input():
    model = ResidualBiLSTM(NetworkConfig(n_inputs=113, n_classes=18)).eval()
    assert model(torch.randn(2, 24, 113)).shape == (2, 18)


def test_each_window_is_independent_of_the_others_in_its_batch():
    torch.manual_seed(0)
    model = ResidualBiLSTM(NetworkConfig()).eval()
    x = torch.randn(5, 128, 9)
    with torch.no_grad():
        batched = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_bidirectional_output_depends_on_future_steps_but_forward_only_does_not_at_the_last_step():
    torch.manual_seed(0)
    x = torch.randn(1, 24, 9)
    changed_first = x.clone()
    changed_first[0, 0] += 5.0
    for bidirectional in (True, False):
        model = ResidualBiLSTM(NetworkConfig(bidirectional=bidirectional)).eval()
        with torch.no_grad():
            assert not torch.allclose(model(x), model(changed_first))


def test_directions_are_concatenated_to_n_hidden():
    model = ResidualBiLSTM(NetworkConfig(n_hidden=28))
    layer = model.blocks[0].layers[0]
    assert layer.forward_dir.lstm.hidden_size == 14 and layer.backward_dir.lstm.hidden_size == 14
    assert layer(torch.randn(2, 10, 9)).shape == (2, 10, 28)


def test_normalisation_uses_the_stored_training_statistics():
    model = ResidualBiLSTM(NetworkConfig(dropout=0.0)).eval()
    x = torch.randn(3, 24, 9)
    with torch.no_grad():
        before = model(x)
        model.set_normalisation(torch.full((9,), 2.0), torch.full((9,), 3.0))
        torch.testing.assert_close(model(x * 3.0 + 2.0), before)


def test_the_mean_readout_classifies_the_average_over_the_window_and_the_last_the_final_step():
    torch.manual_seed(0)
    x = torch.randn(3, 24, 9)
    for readout in ("last", "mean"):
        model = ResidualBiLSTM(NetworkConfig(readout=readout)).eval()
        with torch.no_grad():
            h = x
            for block in model.blocks:
                h = block(h)
            read = h.mean(1) if readout == "mean" else h[:, -1]
            assert torch.allclose(model(x), model.classifier(read), atol=1e-6)
    # a config names the seed's readout only by leaving it out: older checkpoints' digests stay
    assert "readout" not in NetworkConfig().to_dict()
    assert NetworkConfig(readout="mean").to_dict()["readout"] == "mean"
    with pytest.raises(ValueError, match=r"model\.readout must be one of last, mean"):
        NetworkConfig(readout="max")
