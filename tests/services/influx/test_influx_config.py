"""Configuration of the InfluxDB historian: TOML file, environment, clear one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.historian.influx import InfluxHistorian
from services.historian.influx_client import InfluxConfig, InfluxConfigError, load_config


def _toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "influx.toml"
    p.write_text(text)
    return p


def test_defaults_verify_tls_and_hide_secrets() -> None:
    config = load_config(env={})
    assert config == InfluxConfig()
    assert config.verify_tls is True and config.create_database is True
    secret = InfluxConfig(username="u", password="hunter2", token="tok")
    assert "hunter2" not in repr(secret) and "tok" not in repr(secret)


def test_file_then_environment(tmp_path: Path) -> None:
    path = _toml(
        tmp_path,
        '[influx]\nurl = "https://h:8086"\ndatabase = "prod"\nusername = "bp"\n'
        'password_env = "HIST_PW"\ntimeout_s = 3\nverify_tls = true\n',
    )
    config = load_config(path, env={"HIST_PW": "s3cret", "BPCONTROL_INFLUX_DATABASE": "test"})
    assert config.url == "https://h:8086" and config.username == "bp"
    assert config.password == "s3cret" and config.timeout_s == 3.0
    assert config.database == "test"  # the environment wins
    config = load_config(
        env={"BPCONTROL_INFLUX_VERIFY_TLS": "false", "BPCONTROL_INFLUX_TOKEN": "t"}
    )
    assert config.verify_tls is False and config.token == "t"


@pytest.mark.parametrize(
    ("text", "env", "words"),
    [
        ("[influx]\nurll = 'x'\n", {}, r"influx\.toml: \[influx\]: unknown key 'urll'"),
        ("[influx]\ntoken_env = 'NOPE'\n", {}, r"token_env: environment variable 'NOPE' is not"),
        ("[influx]\ntimeout_s = 'soon'\n", {}, "timeout_s must be a number"),
        ("[influx]\nverify_tls = 'maybe'\n", {}, "verify_tls must be true or false"),
        ("[influx]\nurl = 'ftp://x'\n", {}, r"influx\.toml: url must start with http"),
        ("[influx]\npassword = 'p'\n", {}, "password is given without username"),
        ("[other]\n", {}, r"no \[influx\] table"),
        ("[influx\n", {}, "cannot read the configuration"),
        ("[influx]\n", {"BPCONTROL_INFLUX_TIMEOUT_S": "-1"}, "timeout_s must be a number > 0"),
    ],
)
def test_bad_configuration_is_one_line(
    tmp_path: Path, text: str, env: dict[str, str], words: str
) -> None:
    with pytest.raises(InfluxConfigError, match=words) as info:
        load_config(_toml(tmp_path, text), env=env)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("batch_points", 0), ("max_buffer_points", -1), ("batch_interval_s", float("nan"))],
)
def test_bad_historian_settings_are_refused(tmp_path: Path, name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        InfluxHistorian(InfluxConfig(), tmp_path / "b.sqlite", **{name: value})  # type: ignore[arg-type]
    assert not (tmp_path / "b.sqlite").exists()  # nothing created
