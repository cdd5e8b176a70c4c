"""Config files and --set overrides: a typo is one line naming the place, with a suggestion."""

import subprocess
import sys
from pathlib import Path

import pytest

from model.train.experiment import ConfigError, load_config, override

ROOT = Path(__file__).resolve().parent.parent


def train(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


@pytest.mark.parametrize(("argv", "expected"), [
    (["--config", "configs/nope.toml"], "no config file at configs/nope.toml"),
    (["--config", "configs/uci_har_3x3.toml", "--set", "model.n_hiden=3"], "did you mean 'model.n_hidden'?"),
    (["--config", "configs/uci_har_3x3.toml", "--set", "modle.n_hidden=3"], "did you mean 'model'?"),
    (["--config", "configs/uci_har_3x3.toml", "--set", "train.epochs=many"], "train.epochs: expected int"),
])  # fmt: skip
def test_train_py_answers_a_config_mistake_in_one_line(argv, expected) -> None:
    result = train(*argv)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and expected in result.stderr


def test_a_typo_in_a_config_file_names_the_file_and_the_nearest_field(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[data]\nwindw = 64\n")
    expected = r"bad.toml: unknown field 'data.windw' \(did you mean 'data.window'\?\)"
    with pytest.raises(ConfigError, match=expected):
        load_config(bad)
    bad.write_text("[data\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_overrides_still_apply() -> None:
    config = override(load_config(ROOT / "configs/uci_har_3x3.toml"), ["model.n_hidden=64", "train.lr=1"])
    assert config.model.n_hidden == 64 and config.train.lr == 1


def test_no_shipped_config_states_a_derived_fact() -> None:
    import tomllib

    for path in sorted((ROOT / "configs").glob("*.toml")):
        raw = tomllib.loads(path.read_text())
        derived = {"preprocessing": ("rate_hz",), "model": ("n_inputs", "n_classes")}
        stated = [f"{section}.{name}" for section, names in derived.items() for name in names
                  if name in raw.get(section, {})]  # fmt: skip
        assert not stated, f"{path.name} states {stated}: derived facts come from one place"


def test_derived_facts_follow_what_they_are_derived_from() -> None:
    config = load_config(ROOT / "configs/uci_har_3x3.toml")
    assert (config.preprocessing.rate_hz, config.model.n_inputs, config.model.n_classes) == (50.0, 9, 6)
    # a changed rate reaches the filters (it used to leave them designed for 50 Hz)
    assert override(config, ["data.rate_hz=25.0"]).preprocessing.rate_hz == 25.0
    opportunity = load_config(ROOT / "configs/opportunity_18.toml")
    assert (opportunity.preprocessing.rate_hz, opportunity.model.n_inputs, opportunity.model.n_classes) == (
        30.0, 113, 18)  # fmt: skip
    assert override(opportunity, ['data.labels="locomotion"']).model.n_classes == 5
    assert override(opportunity, ['preprocessing.inputs=["c001", "c002"]']).model.n_inputs == 2


@pytest.mark.parametrize(("toml", "expected"), [
    ("[preprocessing]\nrate_hz = 30.0\n",
     "bad.toml preprocessing.rate_hz: 30.0 disagrees with data.rate_hz (50.0): it is derived"),
    ("[model]\nn_classes = 5\n", "bad.toml model.n_classes: 5 disagrees with the dataset's classes (6)"),
    ("[model]\nn_inputs = 6\n", "bad.toml model.n_inputs: 6 disagrees with the preprocessing's features (9)"),
    ('[data]\ndataset = "hpat"\n', "bad.toml data.dataset: unknown dataset 'hpat' (did you mean 'hapt'?)"),
    ('[data]\ndataset = "csv"\n', "bad.toml data.classes: a csv dataset names its classes"),
    ('[data]\ndataset = "opportunity"\nlabels = "gesture"\n', "bad.toml data.labels: unknown OPPORTUNITY"),
])  # fmt: skip
def test_a_config_that_contradicts_a_derived_fact_is_one_line_naming_it(tmp_path, toml, expected) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(toml)
    with pytest.raises(ConfigError) as error:
        load_config(bad)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_a_derived_fact_that_agrees_is_accepted_and_a_dataset_brings_its_preprocessing(tmp_path) -> None:
    good = tmp_path / "good.toml"  # as an older checkpoint's config states them
    good.write_text("[data]\nrate_hz = 50.0\n[preprocessing]\nrate_hz = 50.0\n"
                    "[model]\nn_inputs = 9\nn_classes = 6\n")
    assert load_config(good).model.n_classes == 6
    good.write_text('[data]\ndataset = "opportunity"\nrate_hz = 30.0\n[preprocessing]\ninputs = ["c001"]\n')
    assert load_config(good).preprocessing.kind == "opportunity"  # the kind that fills sensor dropouts


def test_train_py_refuses_a_derived_fact_set_by_hand_in_one_line() -> None:
    result = train("--config", "configs/uci_har_3x3.toml", "--set", "model.n_inputs=113")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "--set model.n_inputs: 113 disagrees with the preprocessing's features (9)" in result.stderr
