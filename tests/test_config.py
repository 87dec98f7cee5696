from pathlib import Path

import pytest

from synthehr.configs.settings import ConfigError, load_settings


def test_defaults_match_documented_file():
    s = load_settings(env={}, workspace_config=False)
    assert s.workspace.path == Path("./synthehr-workspace")
    assert s.llm.backend == "embedded"
    assert s.privacy.target_epsilon == 1.0
    assert s.privacy.accountant == "prv"
    assert s.generation.max_rows == 100_000


def test_every_settings_key_is_documented_in_default_yaml():
    import yaml
    from importlib import resources

    from synthehr.configs.settings import Settings

    doc = yaml.safe_load(resources.files("synthehr.configs").joinpath("default.yaml").read_text())
    for section, field in Settings.model_fields.items():
        assert section in doc, section
        for key in field.annotation.model_fields:
            assert key in doc[section], f"{section}.{key} missing from configs/default.yaml"


def test_precedence_defaults_workspace_user_env(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "config.yaml").write_text("privacy:\n  target_epsilon: 2\n  accountant: rdp\ngeneration:\n  max_rows: 10\n")
    user = tmp_path / "user.yaml"
    user.write_text("privacy:\n  target_epsilon: 3\n")
    env = {"SYNTHEHR_HOME": str(ws), "SYNTHEHR_GENERATION__MAX_ROWS": "500"}
    s = load_settings(user, env=env)
    assert s.workspace.path == ws
    assert s.privacy.accountant == "rdp"  # workspace file
    assert s.privacy.target_epsilon == 3.0  # user file beats workspace file
    assert s.generation.max_rows == 500  # environment beats files


def test_env_config_file_variable(tmp_path):
    user = tmp_path / "u.yaml"
    user.write_text("llm:\n  max_steps: 9\n")
    s = load_settings(env={"SYNTHEHR_CONFIG": str(user)}, workspace_config=False)
    assert s.llm.max_steps == 9


def test_unknown_key_names_key_and_file(tmp_path):
    user = tmp_path / "bad.yaml"
    user.write_text("privacy:\n  target_epsilonn: 3\n")
    with pytest.raises(ConfigError) as e:
        load_settings(user, env={}, workspace_config=False)
    msg = str(e.value)
    assert "privacy.target_epsilonn" in msg and str(user) in msg and "target_epsilon" in msg


def test_unknown_section_names_file(tmp_path):
    user = tmp_path / "bad.yaml"
    user.write_text("privacyy:\n  target_epsilon: 3\n")
    with pytest.raises(ConfigError, match="privacyy"):
        load_settings(user, env={}, workspace_config=False)


def test_wrong_type_names_key_and_origin(tmp_path):
    user = tmp_path / "bad.yaml"
    user.write_text("generation:\n  max_rows: many\n")
    with pytest.raises(ConfigError) as e:
        load_settings(user, env={}, workspace_config=False)
    assert "generation.max_rows" in str(e.value) and str(user) in str(e.value)


def test_wrong_type_from_environment_names_variable():
    with pytest.raises(ConfigError) as e:
        load_settings(env={"SYNTHEHR_PRIVACY__TARGET_EPSILON": "-1"}, workspace_config=False)
    assert "SYNTHEHR_PRIVACY__TARGET_EPSILON" in str(e.value)


def test_missing_user_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml", env={}, workspace_config=False)


def test_invalid_yaml_is_clear(tmp_path):
    user = tmp_path / "bad.yaml"
    user.write_text("privacy: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(user, env={}, workspace_config=False)
