"""The shipped checkpoints (the default and the fleet model): each loads from its files alone,
reproduces its recorded scores, and the live path reproduces offline evaluation on a held-out
subject."""

import json
from pathlib import Path

import pytest
from test_live import assert_live_equals_offline

from model.net.checkpoint import load_checkpoint
from streamer.cli.main import main
from streamer.live import DEFAULT_CHECKPOINT

FLEET_CHECKPOINT = DEFAULT_CHECKPOINT.with_name("uci_har_2x2_fleet.pt")


@pytest.fixture(scope="module", params=[DEFAULT_CHECKPOINT, FLEET_CHECKPOINT], ids=["default", "fleet"])
def shipped(request):
    assert request.param.exists(), f"the shipped model {request.param} is missing"
    return load_checkpoint(request.param)


def test_evaluate_reproduces_the_recorded_test_accuracy(shipped, capsys):
    assert main(["evaluate", "--checkpoint", str(shipped.path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    recorded = shipped.meta["metrics"]["test"]
    assert result["split"] == "test" and result["data_fingerprint_matches"]
    assert result["n_windows"] == recorded["n_windows"]
    assert abs(result["accuracy"] - recorded["accuracy"]) <= 0.002
    assert abs(result["f1_weighted"] - recorded["f1_weighted"]) <= 0.002


def test_the_shipped_model_meets_the_bar_it_claims(shipped):
    test = shipped.meta["metrics"]["test"]
    assert test["accuracy"] >= 0.94 and test["f1_weighted"] >= 0.94  # the seed's final: 0.8992
    assert Path(shipped.meta["command"].split()[3]).exists()  # the config that produced it is committed


def test_live_replay_of_a_test_subject_equals_offline_evaluation(shipped):
    assert_live_equals_offline(shipped, subject=2)
