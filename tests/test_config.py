from pathlib import Path

import pytest
import yaml

from kwspot.config import DEFAULTS, load_config, override, validate
from kwspot.errors import KwspotError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_config_yaml_states_exactly_the_defaults():
    assert validate(yaml.safe_load((REPO / "config.yaml").read_text())) == DEFAULTS


def test_file_values_override_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("detector:\n  threshold: 0.6\n  thresholds: {stop: 0.5}\naudio:\n  device: USB\n")
    settings, used = load_config(str(path))
    assert used == path
    assert settings["detector"]["threshold"] == 0.6
    assert settings["detector"]["thresholds"] == {"stop": 0.5}
    assert settings["audio"]["device"] == "USB"
    assert settings["detector"]["refractory_s"] == DEFAULTS["detector"]["refractory_s"]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("detector:\n  treshold: 0.5\n", "unknown key 'detector.treshold'"),
        ("sound:\n  device: 1\n", "unknown section 'sound'"),
        ("detector:\n  threshold: -0.1\n", "detector.threshold"),
        ("detector:\n  threshold: high\n", "detector.threshold"),
        ("detector:\n  smoothing_hops: 2.5\n", "detector.smoothing_hops"),
        ("detector:\n  thresholds: {halt: 0.5}\n", "detector.thresholds.halt"),
        ("sinks:\n  socket_mode: 660\n", "sinks.socket_mode"),
        ("sinks:\n  console: maybe\n", "sinks.console"),
        ("audio:\n  device: [1, 2]\n", "audio.device"),
        ("- just\n- a list\n", "mapping"),
        ("detector: [1\n", "not valid YAML"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(KwspotError) as err:
        load_config(str(path))
    assert needle in str(err.value)
    assert str(path) in str(err.value)


def test_lookup_order_env_then_system_then_user(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("KWSPOT_CONFIG", raising=False)
    monkeypatch.setattr("kwspot.config.SYSTEM_CONFIG", tmp_path / "etc.yaml")
    assert load_config()[1] is None
    user = tmp_path / "xdg" / "kwspot" / "config.yaml"
    user.parent.mkdir(parents=True)
    user.write_text("model:\n  threads: 2\n")
    assert load_config()[1] == user
    (tmp_path / "etc.yaml").write_text("model:\n  threads: 3\n")
    assert load_config()[0]["model"]["threads"] == 3
    env = tmp_path / "env.yaml"
    env.write_text("model:\n  threads: 4\n")
    monkeypatch.setenv("KWSPOT_CONFIG", str(env))
    assert load_config()[0]["model"]["threads"] == 4
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("")
    assert load_config(str(explicit))[0] == DEFAULTS


def test_missing_explicit_config_is_an_error(tmp_path):
    with pytest.raises(KwspotError, match="no such config file"):
        load_config(str(tmp_path / "nope.yaml"))


def test_command_line_override_is_checked():
    settings = validate(None)
    override(settings, "detector.threshold", 0.7)
    assert settings["detector"]["threshold"] == 0.7
    with pytest.raises(KwspotError, match="--threshold"):
        override(settings, "detector.threshold", 1.5)
