"""docker-compose.yml as data for the tests: loading, ``${VAR}`` interpolation as compose does it, env files,
and what each service's code reads (derived from the pydantic settings classes in ``caravan.settings``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from caravan.settings import GatewaySettings, RegistrySettings, WorkerSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILES = sorted([*ROOT.glob("*/Dockerfile"), *ROOT.glob("*/Dockerfile.*")])
SETTINGS: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings, "registry": RegistrySettings, "worker": WorkerSettings,
}
_VAR = re.compile(r"\$(?:(?P<escape>\$)|\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
                  r"|(?P<bare>[A-Za-z_]\w*))")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``$$``."""

    def substitute(match: re.Match[str]) -> str:
        if match.group("escape"):
            return "$"
        name = match.group("name") or match.group("bare")
        value, op, arg = env.get(name), match.group("op"), match.group("arg") or ""
        if (op == ":-" and not value) or (op == "-" and value is None):
            return arg
        if op in (":?", "?") and not value:
            raise KeyError(f"{name}: {arg}")
        return value or ""

    return _VAR.sub(substitute, text)


def interpolate_all(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_all(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_all(value, env) for key, value in node.items()}
    return node


def referenced_vars(text: str) -> set[str]:
    """Every variable a compose file interpolates."""
    return {m.group("name") or m.group("bare") for m in _VAR.finditer(text) if not m.group("escape")}


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines; comments and blank lines skipped."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file, interpolated with ``env`` when given."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return interpolate_all(data, env) if env is not None else data


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment`` (mapping or list form) as strings."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {str(key): str(value) for key, value in raw.items()}


def settings_class(service: Mapping[str, Any]) -> type[BaseSettings] | None:
    """The settings class of the code a service runs: ``python -m X`` → X's; ``caravan import-demo`` → the store's."""
    command = list(service.get("command") or [])
    if command[:2] == ["python", "-m"]:
        return SETTINGS[command[2]]
    if command == ["caravan", "import-demo"]:
        return RegistrySettings
    return None


def env_names(cls: type[BaseSettings]) -> set[str]:
    """Every environment variable a settings class reads (aliases, else prefix + field name)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice for choice in alias.choices if isinstance(choice, str)}
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def container_ports(service: Mapping[str, Any]) -> set[int]:
    """Container-side ports a service publishes or exposes."""
    ports = {int(str(item).rsplit(":", 1)[-1].split("/")[0]) for item in service.get("ports") or []}
    return ports | {int(str(item).split("/")[0]) for item in service.get("expose") or []}


def url_targets(text: str) -> list[tuple[str, int]]:
    """``(host, port)`` of every URL in ``text``."""
    found = []
    for url in re.findall(r"[a-z]+://[^\s'\"]+", text):
        parts = urlsplit(url)
        if parts.hostname and parts.port:
            found.append((parts.hostname, parts.port))
    return found
