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
        ("detector:\n  thresholds: {stop: 1.5}\n", "detector.thresholds.stop"),
        ("detector:\n  thresholds: [stop]\n", "detector.thresholds"),
        ("sinks:\n  socket_mode: 660\n", "sinks.socket_mode"),
        ("sinks:\n  console: maybe\n", "sinks.console"),
        ("audio:\n  device: [1, 2]\n", "audio.device"),
        ("audio:\n  device: ''\n", "audio.device"),
        ('audio:\n  device: "mic\\0name"\n', "audio.device"),
        ('audio:\n  device: "mic\\nname"\n', "audio.device"),
        (f"audio:\n  device: {'x' * 300}\n", "audio.device"),
        ("- just\n- a list\n", "mapping"),
        ("detector: [1\n", "not valid YAML"),
        ("detector:\n  threshold: 2001-13-45\n", "not valid YAML (a value: month must be in 1..12)"),
        ("detector:\n  hop_ms: !!int abc\n", "not valid YAML (a value: invalid literal"),
        ("detector:\n  threshold: !!float abc\n", "not valid YAML (a value: could not convert"),
        (f"detector:\n  hop_ms: {'9' * 5000}\n", "not valid YAML (a value: Exceeds the limit"),
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


def test_keywords_that_yaml_11_reads_as_booleans_work_unquoted(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("detector:\n  thresholds: {yes: 0.5, no: 0.6, on: 0.7, off: 0.75}\nsinks:\n  jsonl: yes\n")
    settings, _ = load_config(str(path))
    assert settings["detector"]["thresholds"] == {"yes": 0.5, "no": 0.6, "on": 0.7, "off": 0.75}
    assert settings["sinks"]["jsonl"] is True  # values keep their YAML meaning


def test_numbers_in_exponent_form_without_a_dot_are_numbers_as_in_yaml_12(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("detector:\n  threshold: 5e-1\n  thresholds: {go: 9E-1, stop: +7.5e-1}\n")
    settings, _ = load_config(str(path))
    assert settings["detector"]["threshold"] == 0.5
    assert settings["detector"]["thresholds"] == {"go": 0.9, "stop": 0.75}
    path.write_text("detector:\n  threshold: 5e-1x\n")  # not a number: still refused by name
    with pytest.raises(KwspotError, match=r"detector.threshold must be a number, not '5e-1x'"):
        load_config(str(path))


def test_per_keyword_thresholds_are_checked_against_the_model_by_name():
    from kwspot.listen import detector_settings
    from kwspot.model import Model, bundled_model_path

    model = Model(bundled_model_path())
    settings = validate({"detector": {"thresholds": {"on": 0.42}}})
    assert detector_settings(settings, model).thresholds["on"] == 0.42
    with pytest.raises(KwspotError, match=r"my.yaml: detector.thresholds.halt is not one of the model's keywords"):
        detector_settings(validate({"detector": {"thresholds": {"halt": 0.5}}}), model, where="my.yaml")


def test_threshold_flag_wins_over_every_per_keyword_threshold():
    """--threshold is one threshold for every keyword: the config's per-keyword ones give way, as the sidecar's do."""
    from kwspot.listen import detector_settings
    from kwspot.model import Model, bundled_model_path

    model = Model(bundled_model_path())
    settings = validate({"detector": {"threshold": 0.5, "thresholds": {"yes": 0.9999}}})
    flagged = detector_settings(settings, model, cli_threshold=True)
    assert flagged.threshold == 0.5 and not flagged.thresholds
    assert detector_settings(settings, model).thresholds["yes"] == 0.9999
    with pytest.raises(KwspotError, match="halt"):  # a wrong keyword is still an error
        detector_settings(validate({"detector": {"thresholds": {"halt": 0.5}}}), model, cli_threshold=True)


def test_a_config_that_is_not_utf8_is_one_line_naming_the_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("# r\u00e9glages\ndetector:\n  threshold: 0.7\n".encode("latin-1"))
    with pytest.raises(KwspotError, match=r"latin1.yaml: not UTF-8 text \(byte 0xe9 at line 1\)"):
        load_config(str(path))


def test_yaml_aliases_are_refused_before_anything_expands(tmp_path):
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    bomb += [f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(bomb) + "\n")
    with pytest.raises(KwspotError) as err:
        load_config(str(path))
    assert "aliases" in str(err.value) and len(str(err.value)) < 200


def test_a_huge_bad_value_is_not_spelled_out_in_the_error(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("detector:\n  threshold: [" + ", ".join(["1"] * 5000) + "]\n")
    with pytest.raises(KwspotError) as err:
        load_config(str(path))
    assert "detector.threshold" in str(err.value) and len(str(err.value)) < 200


def test_the_thresholds_line_evaluate_prints_loads_as_config(tmp_path):
    from kwspot.train.report import config_snippet

    chosen = {"yes": 0.7, "no": 0.85, "on": 0.8, "off": 0.95, "null": 0.6, "1": 0.5, "a, b": 0.5, "x: y": 0.5,
              "été": 0.5}  # words of a user's own model: quoted where YAML would read them otherwise
    path = tmp_path / "c.yaml"
    path.write_text(config_snippet(chosen))
    assert load_config(str(path))[0]["detector"]["thresholds"] == chosen
