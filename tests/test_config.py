"""Config files and --set overrides: a typo is one line naming the place, with a suggestion."""

import subprocess
import sys
from pathlib import Path

import pytest

from model.config import ConfigError, load_config, override

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
