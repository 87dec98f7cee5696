"""Typed settings: packaged defaults < workspace config.yaml < user file < SYNTHEHR_* variables."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from synthehr.errors import UserError


class ConfigError(UserError):
    """A configuration file or variable is wrong; the message names the key and where it came from."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WorkspaceSettings(_Section):
    path: Path = Path("./synthehr-workspace")


class LLMSettings(_Section):
    backend: Literal["embedded", "transformers", "llamacpp", "openai", "fake"] = "embedded"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    device: str = "cpu"
    n_ctx: int = Field(4096, gt=0)
    temperature: float = Field(0.0, ge=0)
    max_new_tokens: int = Field(256, gt=0)
    constrained: bool = True
    max_steps: int = Field(6, gt=0)
    timeout_s: float = Field(120, gt=0)
    chat_format: Literal["auto", "llama-2", "chatml", "template"] = "auto"
    runtime: Literal["auto", "llamacpp", "transformers"] = "auto"
    n_threads: int = Field(0, ge=0)
    n_gpu_layers: int = Field(0, ge=-1)
    grammar_param: str | None = None
    prompt_cache_dir: str | None = "auto"
    tool_calling: bool = False


class PrivacySettings(_Section):
    target_epsilon: float = Field(1.0, gt=0)
    target_delta: float | None = Field(None, gt=0, lt=1)
    accountant: Literal["prv", "rdp"] = "prv"
    source_budget_epsilon: float = Field(10.0, gt=0)
    source_budget_delta: float = Field(1e-4, gt=0, lt=1)
    max_epsilon_per_request: float = Field(10.0, gt=0)
    preprocessing_share: float = Field(0.8, ge=0, lt=0.9)
    # Whether the user is the data custodian who may see custodian reports (non-private statistics of the
    # real records); None = per source: True for built-in public sources (NHANES), False for user sources.
    custodian_reports: bool | None = None


class GenerationSettings(_Section):
    max_rows: int = Field(100_000, gt=0)
    default_rows: int = Field(1000, gt=0)
    seed: int = 1234


class TrainingSettings(_Section):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(256, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    generator_lr: float = Field(2e-4, gt=0)
    discriminator_lr: float = Field(2e-4, gt=0)
    noise_dim: int = Field(64, gt=0)
    hidden_dim: int = Field(256, gt=0)
    holdout_fraction: float = Field(0.2, ge=0, lt=0.9)
    threads: int = Field(1, ge=0)
    generator_layers: int = Field(2, gt=0)
    discriminator_hidden_dim: int = Field(128, gt=0)
    discriminator_layers: int = Field(2, gt=0)
    generator_steps: int = Field(1, gt=0)
    discriminator_beta1: float = Field(0.5, ge=0, lt=1)
    gumbel_tau: float = Field(0.2, gt=0)
    numeric_bins: int = Field(0, ge=0)
    marginal_weight: float = Field(1.0, ge=0)
    marginal_pretrain_steps: int = Field(1000, ge=0)
    # The marginal loss on a column x label table compares P(column | label) for each label value
    # (every cohort fitted equally, not in proportion to its size), instead of the joint cells.
    marginal_conditional: bool = False


class KnowledgeSettings(_Section):
    chroma_mode: Literal["persistent", "http"] = "persistent"
    chroma_host: str = "localhost"
    chroma_port: int = 8000
    collection: str = "synthehr-knowledge"
    top_k: int = Field(4, gt=0)
    embedding_model: str | None = None


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(7860, gt=0, lt=65536)
    token_env: str | None = "SYNTHEHR_TOKEN"
    # Largest request body accepted by the web app (bytes); larger ones are answered 413.
    max_body_bytes: int = Field(1_000_000, gt=0)
    # Build or refresh the knowledge index in the background when the server starts.
    index_on_start: bool = True


class Settings(_Section):
    workspace: WorkspaceSettings = WorkspaceSettings()
    llm: LLMSettings = LLMSettings()
    privacy: PrivacySettings = PrivacySettings()
    generation: GenerationSettings = GenerationSettings()
    training: TrainingSettings = TrainingSettings()
    knowledge: KnowledgeSettings = KnowledgeSettings()
    server: ServerSettings = ServerSettings()


ENV_PREFIX = "SYNTHEHR_"


def _read_yaml(text: str, origin: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of sections")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any], origin: str, origins: dict[str, str], prefix: str = "") -> None:
    for key, value in over.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, origin, origins, dotted + ".")
        else:
            base[key] = value
            origins[dotted] = origin
            if isinstance(value, dict):
                for sub in value:
                    origins[f"{dotted}.{sub}"] = origin


def _env_overrides(env: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if env.get("SYNTHEHR_HOME"):
        out.append(("SYNTHEHR_HOME", {"workspace": {"path": env["SYNTHEHR_HOME"]}}))
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("__")
        # Values are parsed as YAML scalars so that "3", "true" and "null" get their types.
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        out.append((name, {section: {key: value}}))
    return out


def load_settings(
    user_file: Path | str | None = None,
    env: dict[str, str] | None = None,
    workspace_config: bool = True,
) -> Settings:
    """Load settings with precedence: defaults < <workspace>/config.yaml < user_file < environment.

    `user_file` falls back to $SYNTHEHR_CONFIG. Raises ConfigError naming the key and its origin.
    """
    env = dict(os.environ if env is None else env)
    default_text = resources.files("synthehr.configs").joinpath("default.yaml").read_text(encoding="utf-8")
    data = _read_yaml(default_text, "configs/default.yaml")
    origins: dict[str, str] = {}
    _set_origins(data, "configs/default.yaml", origins)

    layers: list[tuple[str, dict[str, Any]]] = []
    user_path = Path(user_file) if user_file else (Path(env["SYNTHEHR_CONFIG"]) if env.get("SYNTHEHR_CONFIG") else None)
    env_layers = _env_overrides(env)

    if workspace_config:
        # The workspace location itself may come from any layer; resolve it before reading its config.
        ws = Path(str(data["workspace"]["path"]))
        user_data = None
        if user_path is not None:
            user_data = _load_file(user_path)
            ws = Path(str(user_data.get("workspace", {}).get("path", ws))) if isinstance(user_data.get("workspace"), dict) else ws
        for _, layer in env_layers:
            if "workspace" in layer and "path" in layer["workspace"]:
                ws = Path(str(layer["workspace"]["path"]))
        ws_file = ws / "config.yaml"
        if ws_file.is_file():
            layers.append((str(ws_file), _load_file(ws_file)))
        if user_path is not None and user_data is not None:
            layers.append((str(user_path), user_data))
    elif user_path is not None:
        layers.append((str(user_path), _load_file(user_path)))
    layers.extend(env_layers)

    for origin, layer in layers:
        _merge(data, layer, origin, origins)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        origin = origins.get(key) or origins.get(key.split(".")[0], "configuration")
        if err["type"] == "extra_forbidden":
            section = key.split(".")[0]
            valid = _valid_keys(key)
            raise ConfigError(f"{origin}: unknown setting '{key}'" + (f" (valid in '{section}': {valid})" if valid else "")) from None
        raise ConfigError(f"{origin}: setting '{key}' {err['msg'].lower()} (got {err.get('input')!r})") from None


def _valid_keys(key: str) -> str:
    parts = key.split(".")
    model: type[BaseModel] = Settings
    for p in parts[:-1]:
        field = model.model_fields.get(p)
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return ", ".join(model.model_fields)
        model = field.annotation
    return ", ".join(model.model_fields)


def _set_origins(data: dict[str, Any], origin: str, origins: dict[str, str], prefix: str = "") -> None:
    for k, v in data.items():
        origins[f"{prefix}{k}"] = origin
        if isinstance(v, dict):
            _set_origins(v, origin, origins, f"{prefix}{k}.")


def _load_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    return _read_yaml(path.read_text(encoding="utf-8"), str(path))
