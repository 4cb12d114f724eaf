"""Configuration: one YAML file plus environment overrides, validated into msgspec Structs.

Precedence, lowest first: built-in defaults, ``compass.yaml``, ``COMPASS__SECTION__KEY=value``
environment variables (values parsed as YAML scalars), then the few short names documented in
the README (``COMPASS_HOME``, ``COMPASS_HOST``, ``COMPASS_PORT``...). Any error stops start-up
with a ``ConfigError`` that names the key and what is wrong.

The model pool comes from ``models:`` (our format), or LiteLLM proxy's ``model_list:`` so users
can bring their existing config, or, when neither is given, from the provider keys found in
the environment; with no key at all, the demo pool served by the built-in fake upstream.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import msgspec

from compass.errors import ConfigError
from layers.types import ModelSpec

DEFAULT_PORT = 8402


class ServerSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    allow_public_without_keys: bool = False
    log_level: str = "info"
    json_logs: bool = False
    request_log: bool = False  # one log line per request (JSON with json_logs), with the /feedback id


class ClassifierSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    backend: str = "embedding"
    options: dict[str, Any] = {}
    fallback: str = "length"
    time_budget_ms: float = 150.0


class SelectorSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    backend: str = "neighbourhood"  # tier-context thompson when the MiniLM embedder is off
    options: dict[str, Any] = {}
    default_cost_weight: float | None = None


class RoutingSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # A conversation's follow-up turns go to the model that answered its earlier turns.
    affinity: bool = True
    affinity_max_conversations: int = 100_000  # least recently used are forgotten past this


class CacheSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    backend: str = "semantic"
    options: dict[str, Any] = {}


class StorageSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    database: str = "compass.duckdb"  # relative to home
    store_content: Literal["full", "hash"] = "full"
    # journal: every 2xx row is on disk before it is sent (survives kill -9; ~µs); strict: also
    # waits for DuckDB's fsync'd commit (survives an OS crash; ~12 ms); batched: neither
    durability: Literal["journal", "strict", "batched"] = "journal"
    retention_days: float | None = None
    flush_interval_ms: float = 50.0
    batch_size: int = 512
    # Fleet store (in progress, docs/deploy.md): postgresql://user:pass@host:port/db; None: embedded DuckDB.
    url: str | None = None
    connect_timeout_s: float = 5.0
    spool_max_mb: float = 256.0  # fleet: rows kept on disk (<home>/spool) while the store is away; then 503
    spool_dir: str | None = None  # fleet: where the spool lives (relative to home); None: <home>/spool


class UpstreamSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    backend: str = "litellm"
    direct_openai_compatible: bool = True  # skip LiteLLM's bookkeeping for self-hosted OpenAI servers
    timeout_s: float = 60.0
    max_retries: int = 1
    max_fallback_models: int = 2
    breaker_failures: int = 3  # consecutive failures that open a model's circuit
    breaker_cooldown_s: float = 30.0
    expected_completion_tokens: int = 256


class SecuritySettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    admin_key: str | None = None  # COMPASS_ADMIN_KEY wins; guards /admin, SQL and key management


class LimitsSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    max_body_bytes: int = 4 * 1024 * 1024
    max_messages: int = 2048
    max_tokens_ceiling: int | None = 65_536
    requests_per_minute: float | None = None  # per key (or for everyone in local mode); None: no limit


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    home: str = "./data"
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    models: list[ModelSpec] = []
    model_list: list[dict[str, Any]] = []
    demo: Literal["auto", "on", "off"] | bool = "auto"  # YAML reads on/off as booleans
    classifier: ClassifierSettings = msgspec.field(default_factory=ClassifierSettings)
    selector: SelectorSettings = msgspec.field(default_factory=SelectorSettings)
    routing: RoutingSettings = msgspec.field(default_factory=RoutingSettings)
    cache: CacheSettings = msgspec.field(default_factory=CacheSettings)
    storage: StorageSettings = msgspec.field(default_factory=StorageSettings)
    upstream: UpstreamSettings = msgspec.field(default_factory=UpstreamSettings)
    security: SecuritySettings = msgspec.field(default_factory=SecuritySettings)
    limits: LimitsSettings = msgspec.field(default_factory=LimitsSettings)

    def __post_init__(self) -> None:
        if isinstance(self.demo, bool):
            self.demo = "on" if self.demo else "off"

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser()

    @property
    def journal_path(self) -> Path:
        """Where ``durability: journal`` keeps acknowledged rows until they are in DuckDB."""
        return self.database_path.parent / (self.database_path.stem + ".journal")

    @property
    def database_path(self) -> Path:
        path = Path(self.storage.database)
        return path if path.is_absolute() else self.home_path / path


# Short environment names; everything else is reachable as COMPASS__SECTION__KEY.
ENV_SHORTCUTS: dict[str, tuple[str, ...]] = {
    "COMPASS_HOME": ("home",),
    "COMPASS_HOST": ("server", "host"),
    "COMPASS_PORT": ("server", "port"),
    "COMPASS_CLASSIFIER": ("classifier", "backend"),
    "COMPASS_SELECTOR": ("selector", "backend"),
    "COMPASS_CACHE": ("cache", "enabled"),
    "COMPASS_DEMO": ("demo",),
    "COMPASS_LOG_JSON": ("server", "json_logs"),
    "COMPASS_LOG_LEVEL": ("server", "log_level"),
    "COMPASS_REQUEST_LOG": ("server", "request_log"),
    "COMPASS_STORE_CONTENT": ("storage", "store_content"),
    "COMPASS_DATABASE_URL": ("storage", "url"),
}
# Taken verbatim, not parsed as YAML (a URL's password may hold any character).
RAW_ENV = frozenset({"COMPASS_DATABASE_URL"})


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _parse_scalar(raw: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def env_overrides(environ: dict[str, str]) -> list[tuple[tuple[str, ...], Any, str]]:
    """``(path, value, variable)`` for every COMPASS override present in ``environ``."""
    found = []
    for name, value in sorted(environ.items()):
        if name.startswith("COMPASS__"):
            path = tuple(p.lower() for p in name[len("COMPASS__") :].split("__") if p)
            if path:
                found.append((path, _parse_scalar(value), name))
        elif name in ENV_SHORTCUTS:
            parsed = value if name in RAW_ENV else _parse_scalar(value)
            found.append((ENV_SHORTCUTS[name], parsed, name))
    return found


def read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping at the top level, got {type(data).__name__}")
    return data


def load_settings(
    path: str | Path | None = None,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Build validated ``Settings`` from a YAML file, the environment and explicit overrides."""
    environ = dict(os.environ if environ is None else environ)
    tree: dict[str, Any] = read_yaml(path) if path else {}
    for key_path, value, _ in env_overrides(environ):
        _set_path(tree, key_path, value)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(tree, tuple(dotted.split(".")), value)
    try:
        settings = msgspec.convert(tree, Settings, str_keys=True)
    except msgspec.ValidationError as exc:
        source = f"config file {path}" if path else "configuration"
        raise ConfigError(f"invalid {source}: {describe_validation_error(exc)}") from exc
    validate_settings(settings)
    return settings


def describe_validation_error(exc: msgspec.ValidationError) -> str:
    """msgspec says ``Expected `int`, got `str` - at `$.server.port```; make the key lead."""
    text = str(exc)
    message, sep, where = text.rpartition(" - at `")
    if not sep:
        return text
    key = where.rstrip("`").removeprefix("$.").removeprefix("$")
    return f"{key or '(top level)'}: {message}"


def validate_settings(settings: Settings) -> None:
    """Checks that cross fields, with messages that name the key."""
    if not 0 < settings.server.port < 65536:
        raise ConfigError(f"server.port: must be between 1 and 65535, got {settings.server.port}")
    if settings.classifier.time_budget_ms <= 0:
        raise ConfigError("classifier.time_budget_ms: must be positive")
    if settings.limits.max_body_bytes < 1024:
        raise ConfigError("limits.max_body_bytes: must be at least 1024")
    if settings.limits.requests_per_minute is not None and settings.limits.requests_per_minute <= 0:
        raise ConfigError("limits.requests_per_minute: must be positive (or null for no limit)")
    if settings.storage.batch_size < 1:
        raise ConfigError("storage.batch_size: must be at least 1")
    _validate_storage_url(settings.storage)
    if settings.upstream.timeout_s <= 0:
        raise ConfigError("upstream.timeout_s: must be positive")
    _validate_embedder_options(settings.classifier.options.get("embedder"))
    names = [m.name for m in settings.models]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"models: duplicate model names {dupes}")
    for index, model in enumerate(settings.models):
        if model.input_price_per_mtok < 0 or model.output_price_per_mtok < 0:
            raise ConfigError(f"models[{index}] ({model.name}): prices must not be negative")
        if model.name in RESERVED_MODEL_NAMES:
            raise ConfigError(f"models[{index}]: the name {model.name!r} is reserved for routing")
        if model.timeout_s < 0:
            raise ConfigError(
                f"models[{index}] ({model.name}).timeout_s: must not be negative (0: upstream.timeout_s)"
            )


def _validate_storage_url(storage: StorageSettings) -> None:
    if storage.connect_timeout_s <= 0:
        raise ConfigError("storage.connect_timeout_s: must be positive")
    if storage.url is None:
        return
    if not storage.url.startswith(("postgresql://", "postgres://")):
        scheme = storage.url.partition("://")[0] if "://" in storage.url else storage.url[:20]
        raise ConfigError(
            f"storage.url (or COMPASS_DATABASE_URL): must be a postgresql:// URL, got scheme {scheme!r};"
            " leave it unset for the embedded DuckDB file"
        )


def _validate_embedder_options(options: Any) -> None:
    if options is None:
        return
    from layers.embedding import EMBEDDER_OPTIONS, RUNTIMES

    key = "classifier.options.embedder"
    if not isinstance(options, dict):
        raise ConfigError(f"{key}: must be a mapping of options, got {type(options).__name__}")
    unknown = sorted(set(options) - EMBEDDER_OPTIONS)
    if unknown:
        raise ConfigError(f"{key}: unknown option(s) {unknown}; known: {sorted(EMBEDDER_OPTIONS)}")
    if options.get("runtime", "auto") not in RUNTIMES:
        raise ConfigError(f"{key}.runtime: must be one of {list(RUNTIMES)}, got {options['runtime']!r}")


LOCAL_EMBEDDING_MODEL = "compass/minilm"  # the bundled MiniLM, served on /v1/embeddings
RESERVED_MODEL_NAMES = frozenset(
    {"auto", "compass/auto", "compass/cheap", "compass/balanced", "compass/best", LOCAL_EMBEDDING_MODEL}
)


def _secret_ref(value: Any) -> tuple[str | None, str | None]:
    """LiteLLM writes ``os.environ/NAME`` for secrets; return ``(env name, literal key)``."""
    if isinstance(value, str) and value.startswith("os.environ/"):
        return value.removeprefix("os.environ/"), None
    return None, value if isinstance(value, str) else None


def convert_model_list(model_list: list[dict[str, Any]]) -> list[ModelSpec]:
    """LiteLLM proxy ``model_list`` entries → our ``ModelSpec``s.

    Prices come from ``input_cost_per_token`` / ``output_cost_per_token`` (per token, as LiteLLM
    writes them); tier and rank from ``model_info`` (``tier``, ``rank``), defaulting to medium.
    """
    specs = []
    for index, entry in enumerate(model_list):
        where = f"model_list[{index}]"
        if not isinstance(entry, dict) or "model_name" not in entry:
            raise ConfigError(f"{where}: needs model_name and litellm_params")
        params = entry.get("litellm_params") or {}
        if not isinstance(params, dict) or not params.get("model"):
            raise ConfigError(f"{where}.litellm_params.model: required")
        info = entry.get("model_info") or {}
        key_env, key = _secret_ref(params.get("api_key"))
        base_env, base = _secret_ref(params.get("api_base"))
        spec = {
            "name": entry["model_name"],
            "litellm_model": params["model"],
            "api_base": os.environ.get(base_env) if base_env else base,
            "api_key_env": key_env,
            "api_key": key,
            "input_price_per_mtok": float(params.get("input_cost_per_token", 0.0)) * 1e6,
            "output_price_per_mtok": float(params.get("output_cost_per_token", 0.0)) * 1e6,
            "tier": info.get("tier", "medium"),
            "rank": info.get("rank"),
            "context_window": int(info.get("max_input_tokens", params.get("max_input_tokens", 128_000))),
            "timeout_s": float(params.get("timeout", 0.0)),
            "mode": "embedding" if info.get("mode") == "embedding" else "chat",
        }
        try:
            specs.append(msgspec.convert(spec, ModelSpec))
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{where}: {describe_validation_error(exc)}") from exc
    return specs
