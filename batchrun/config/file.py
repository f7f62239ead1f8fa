"""The config file: where it is found, how it is read and how it is checked.

The first of these that is given or exists is used, and only that one:

1. ``--config FILE``;
2. the file named by ``$BATCHRUN_CONFIG``;
3. ``batchrun.toml`` in the current directory;
4. ``$XDG_CONFIG_HOME/batchrun/config.toml`` (``~/.config/batchrun/config.toml``).

The file is TOML. pydantic checks it here, at the edge, and every problem becomes one line
``FILE: KEY: what is wrong``; what the rest of batchrun sees is frozen dataclasses. Nothing in
this module reads ``os.environ``: the CLI passes the environment in.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from batchrun.config.durations import parse_duration_s
from batchrun.config.prices import ModelPrice, PriceTable
from batchrun.errors import ConfigError
from batchrun.limits.dimensions import DIMENSIONS, RateLimits
from batchrun.limits.families import entry_problem
from batchrun.records import Pool, PoolMember
from batchrun.transport.auth import AUTH_STYLES, secret_header_names
from batchrun.transport.batch_styles import BATCH_API_STYLES
from batchrun.transport.endpoints import Endpoints, EndpointSettings, resolve_endpoints

log = logging.getLogger(__name__)

CONFIG_ENV = "BATCHRUN_CONFIG"
LOCAL_CONFIG_NAME = "batchrun.toml"
USER_CONFIG_PATH = Path("batchrun") / "config.toml"

# Endpoint names are stored with every batch and typed on command lines.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_TOML_POSITION_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
# Keys a user might write to put a key itself into the file.
_KEY_LIKE = frozenset({"api_key", "apikey", "key", "token", "api_token", "secret"})
_TYPE_NAMES = {
    "float_type": "a number",
    "int_type": "a whole number",
    "string_type": "a string",
    "dict_type": "a table",
    "model_type": "a table",
    "bool_type": "true or false",
    "list_type": "an array",
}


@dataclass(frozen=True)
class Settings:
    """What the config file says; ``Settings()`` when there is no file."""

    path: Path | None = None
    default_endpoint: str | None = None
    endpoints: Mapping[str, EndpointSettings] = field(default_factory=dict)
    # [prices."MODEL"]: USD per million tokens, overriding the built-in price of that model.
    prices: Mapping[str, ModelPrice] = field(default_factory=dict)
    # How long ended batches are kept before `batchrun prune` deletes them (None: kept).
    retention_s: float | None = None
    # [pools.NAME]: several endpoints used as one.
    pools: Mapping[str, Pool] = field(default_factory=dict)
    # [notify]: the webhook `run` tells when a batch ends, pauses or expires: its URL, or the
    # environment variable that holds it (a URL with a token in it is a secret).
    notify_url: str | None = None
    notify_url_env: str | None = None
    # cache_ttl: the TTL policy of the batch lane's prompt-cache groups ("auto" or "keep";
    # None: not set, auto).
    cache_ttl: str | None = None

    def error(self, key: str, problem: str) -> ConfigError:
        """A ConfigError naming this file and the key: ``FILE: KEY: problem``."""
        return ConfigError(f"{self.path}: {key}: {problem}")


def find_config_file(flag: Path | None, env: Mapping[str, str], cwd: Path) -> Path | None:
    """The config file to use (see the module docstring), or None when there is none.

    A file named by ``--config`` or ``$BATCHRUN_CONFIG`` must exist; the two default places
    are simply skipped when empty.
    """
    if flag is not None:
        return _must_exist(flag, "--config")
    if named := env.get(CONFIG_ENV, "").strip():
        return _must_exist(Path(named), CONFIG_ENV)
    if (cwd / LOCAL_CONFIG_NAME).is_file():
        # Named as the user sees it from here; from elsewhere (a Client given another
        # ``cwd``) by its full path, which the process's own directory would not find.
        here = Path.cwd().resolve() == cwd.resolve()
        return Path(LOCAL_CONFIG_NAME) if here else cwd / LOCAL_CONFIG_NAME
    if (user_file := user_config_path(env)).is_file():
        return user_file
    return None


def user_config_path(env: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/batchrun/config.toml``, by default under ``~/.config``."""
    if config_home := env.get("XDG_CONFIG_HOME", "").strip():
        return Path(config_home) / USER_CONFIG_PATH
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return home / ".config" / USER_CONFIG_PATH


def _must_exist(path: Path, named_by: str) -> Path:
    if not path.exists():
        raise ConfigError(f"{path}: no such config file (named by {named_by}); check the path")
    return path


def load_settings(path: Path | None) -> Settings:
    """Read and check the config file at ``path`` (no file: empty settings).

    Raises ConfigError with one line per problem, each naming the file and the key.
    """
    if path is None:
        return Settings()
    try:
        with path.open("rb") as stream:
            raw = tomllib.load(stream)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        if position := _TOML_POSITION_RE.search(message):
            line, column = position.groups()
            message = message[: position.start()]
            raise ConfigError(f"{path}:{line}:{column}: invalid TOML: {message}") from None
        raise ConfigError(f"{path}: invalid TOML: {message}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; TOML files are UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    try:
        parsed = _ConfigFile.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{path}: {_key(e['loc'])}: {_describe(e)}" for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None
    return Settings(
        path=path,
        default_endpoint=parsed.default_endpoint,
        endpoints={name: table.to_settings(name) for name, table in parsed.endpoints.items()},
        prices={model: table.to_price() for model, table in parsed.prices.items()},
        retention_s=(
            None
            if parsed.retention is None
            else parse_duration_s(parsed.retention, unit_required=True)
        ),
        pools={name: table.to_pool(name, str(path)) for name, table in parsed.pools.items()},
        notify_url=parsed.notify.url if parsed.notify is not None else None,
        notify_url_env=parsed.notify.url_env if parsed.notify is not None else None,
        cache_ttl=parsed.cache_ttl,
    )


def notify_url_problem(url: str) -> str | None:
    """What is wrong with a webhook URL for notifications (None: nothing). The text never
    quotes the URL, which may hold a token."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # ValueError when it is no port number
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or re.search(r"[\s\x00-\x1f\x7f]", url)
    ):
        return (
            "must be an http:// or https:// URL with a host, such as "
            '"https://hooks.example.com/services/..."'
        )
    return None


def notify_url_of(settings: Settings, env: Mapping[str, str]) -> str | None:
    """The webhook URL of the file's ``[notify]`` table: ``url``, or the value of the variable
    that ``url_env`` names (not set: None, with a warning, so the run goes on untold); None
    without the table. ConfigError naming the file and the variable when its value is no
    http(s) URL."""
    if settings.notify_url is not None:
        return settings.notify_url
    name = settings.notify_url_env
    if name is None:
        return None
    value = env.get(name, "").strip()
    if not value:
        log.warning(
            "%s: notify.url_env: $%s is not set, so this run notifies no one; export the "
            "webhook URL in it",
            settings.path,
            name,
        )
        return None
    if problem := notify_url_problem(value):
        raise settings.error("notify.url_env", f"${name} {problem}")
    return value


# -- the file's schema (pydantic, at the edge) ---------------------------------------------


def _fail(message: str) -> PydanticCustomError:
    # The message is passed as context so that braces in it are not read as a template.
    return PydanticCustomError("config", "{message}", {"message": message})


def _check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise _fail("an endpoint name is 1-64 letters, digits, '_', '.' or '-'")
    return value


def _check_base_url(value: str) -> str:
    if not re.match(r"https?://[^/?#\s]+", value) or re.search(r"[?#\s]", value):
        raise _fail(
            "must be an http:// or https:// URL: scheme, host and any path prefix, "
            'such as "https://gateway.example/anthropic"'
        )
    return value


def _check_path(value: str) -> str:
    if not value.startswith("/") or re.search(r"[?#\s]", value):
        raise _fail('must be a path starting with "/", such as "/v1/messages"')
    return value


def _check_env_name(value: str) -> str:
    # The value is never echoed: a key pasted here by mistake must not reach the terminal.
    if not _ENV_NAME_RE.fullmatch(value):
        raise _fail(
            "must be the name of an environment variable (letters, digits and '_'), "
            "not the key itself"
        )
    return value


def _check_header_name(value: str) -> str:
    if not _HEADER_NAME_RE.fullmatch(value):
        raise _fail("is not a valid HTTP header name")
    return value


def _check_literal_header(value: str) -> str:
    value = _check_header_name(value)
    # The file may only name the variable that holds a credential.
    if value.lower() in secret_header_names():
        raise _fail(
            "credentials do not belong in the config file; set auth and api_key_env, "
            "or name a variable in headers_env"
        )
    return value


def _check_json(value: Any, where: str = "") -> Any:
    """TOML values that JSON cannot carry are refused rather than converted silently."""
    if isinstance(value, datetime | date | time):
        raise _fail(f"{where}TOML dates and times have no JSON form; write it as a string")
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(f"{where}nan and inf have no JSON form")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_json(item, f"{where}{_key([key])}: ")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, f"{where}[{index}]: ")
    return value


def _check_auth(value: str) -> str:
    if value not in AUTH_STYLES:
        names = [f'"{name}"' for name in AUTH_STYLES.names()]
        expected = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
        raise _fail(f'must be {expected}, not "{value}"')
    return value


def _check_dimension(value: str) -> str:
    if value not in DIMENSIONS:
        known = DIMENSIONS.names()
        if close := difflib.get_close_matches(value, known, n=1, cutoff=0.6):
            raise _fail(f'unknown key; did you mean "{close[0]}"?')
        raise _fail(f"unknown key; known keys: {', '.join(known)}")
    return value


def _check_limits_entry(value: str) -> str:
    if problem := entry_problem(value):
        raise _fail(problem)
    return value


def _check_extra_key(value: str) -> str:
    if value in ("model", "messages", "max_tokens"):
        raise _fail("every request sets it, so it would never apply")
    if value == "stream":
        raise _fail("batchrun needs whole responses, not streams; remove it")
    return value


def _check_batch_api(value: str) -> str:
    if value != "none" and value not in BATCH_API_STYLES:
        known = ", ".join(f'"{name}"' for name in (*BATCH_API_STYLES.names(), "none"))
        raise _fail(f"unknown batch API {value!r}; the batch APIs are {known}")
    return value


EndpointName = Annotated[str, AfterValidator(_check_name)]
EnvName = Annotated[str, AfterValidator(_check_env_name)]
PositiveNumber = Annotated[float, Field(gt=0)]


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _EndpointTable(_Table):
    base_url: Annotated[str, AfterValidator(_check_base_url)] | None = None
    messages_path: Annotated[str, AfterValidator(_check_path)] | None = None
    auth: Annotated[str, AfterValidator(_check_auth)] | None = None
    api_key_env: EnvName | None = None
    headers: dict[Annotated[str, AfterValidator(_check_literal_header)], str] = {}
    headers_env: dict[Annotated[str, AfterValidator(_check_header_name)], EnvName] = {}
    extra_body: dict[
        Annotated[str, AfterValidator(_check_extra_key)],
        Annotated[Any, AfterValidator(_check_json)],
    ] = {}
    timeout_s: PositiveNumber | None = None
    max_attempts: Annotated[int, Field(ge=1)] | None = None
    # The largest answer read, after decompression (default 32 MiB).
    max_response_bytes: Annotated[int, Field(ge=1024)] | None = None
    # /v1/messages/count_tokens calls a minute with `run --count-tokens` (default 100).
    count_tokens_rpm: PositiveNumber | None = None
    # Requests with a larger max_tokens are streamed; 0 streams every request (default: the
    # official SDK's rule, 21,333, or 8,192 for Opus 4 and 4.1).
    stream_threshold_tokens: Annotated[int, Field(ge=0)] | None = None
    # The server-side batch API (the batch lane): "anthropic", "aimlapi" or "none"; its
    # collection's path, the most requests and bytes per provider batch, the share of the
    # list price it bills, how long a provider batch typically takes (planning, auto), and
    # the bounds of one provider batch's results download (16 GiB and 4 hours by default).
    batch_api: Annotated[str, AfterValidator(_check_batch_api)] | None = None
    batch_path: Annotated[str, AfterValidator(_check_path)] | None = None
    batch_max_requests: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    batch_max_bytes: Annotated[int, Field(ge=1024)] | None = None
    batch_discount: Annotated[float, Field(ge=0, le=1)] | None = None
    batch_typical_s: PositiveNumber | None = None
    batch_results_max_bytes: Annotated[int, Field(ge=1024)] | None = None
    batch_results_max_s: PositiveNumber | None = None
    # The provider's prompt-cache lifetimes as a share of Anthropic's 5 minutes and 1 hour
    # (the batch lane refreshes a group's entry before it expires); for a scaled simulator.
    batch_cache_ttl_scale: PositiveNumber | None = None
    # How a request asks for a structured answer (submit --template with [output]): "native"
    # (output_config.format) or "tool" (a forced tool call, for gateways without it).
    structured_outputs: Literal["native", "tool"] | None = None
    # Per model, family pattern ("claude-sonnet-4*": shared) or "*" (each other model):
    # dimension name → limit per minute.
    limits: dict[
        Annotated[str, AfterValidator(_check_limits_entry)],
        dict[Annotated[str, AfterValidator(_check_dimension)], PositiveNumber],
    ] = {}
    # Across all the endpoint's models together (a gateway key's RPM, a workspace-wide cap):
    # dimension name → limit per minute. A table of its own rather than a reserved entry in
    # `limits`, whose every key names models: this one names none.
    endpoint_limits: dict[Annotated[str, AfterValidator(_check_dimension)], PositiveNumber] = {}

    def to_settings(self, name: str) -> EndpointSettings:
        return EndpointSettings(
            name=name,
            base_url=self.base_url,
            messages_path=self.messages_path,
            auth=self.auth,
            api_key_env=self.api_key_env,
            headers=dict(self.headers),
            headers_env=dict(self.headers_env),
            extra_body=dict(self.extra_body),
            timeout_s=self.timeout_s,
            max_attempts=self.max_attempts,
            max_response_bytes=self.max_response_bytes,
            count_tokens_rpm=self.count_tokens_rpm,
            stream_threshold_tokens=self.stream_threshold_tokens,
            structured_outputs=self.structured_outputs,
            limits={model: RateLimits(values) for model, values in self.limits.items()},
            endpoint_limits=RateLimits(self.endpoint_limits),
            batch_api=self.batch_api,
            batch_path=self.batch_path,
            batch_max_requests=self.batch_max_requests,
            batch_max_bytes=self.batch_max_bytes,
            batch_discount=self.batch_discount,
            batch_typical_s=self.batch_typical_s,
            batch_results_max_bytes=self.batch_results_max_bytes,
            batch_results_max_s=self.batch_results_max_s,
            batch_cache_ttl_scale=self.batch_cache_ttl_scale,
            fields_set=frozenset(self.model_fields_set),
        )


class _PriceTable(_Table):
    # USD per million tokens; cache prices default to 1.25x and 0.1x the input price.
    input: Annotated[float, Field(ge=0)]
    output: Annotated[float, Field(ge=0)]
    cache_write: Annotated[float, Field(ge=0)] | None = None
    cache_read: Annotated[float, Field(ge=0)] | None = None

    def to_price(self) -> ModelPrice:
        standard = ModelPrice.standard(self.input, self.output)
        return ModelPrice(
            self.input,
            self.output,
            standard.cache_write_per_mtok_usd if self.cache_write is None else self.cache_write,
            standard.cache_read_per_mtok_usd if self.cache_read is None else self.cache_read,
        )


def _check_retention(value: str) -> str:
    try:
        parse_duration_s(value, what="retention", unit_required=True)
    except ConfigError as exc:
        raise _fail(exc.message.removeprefix("retention: ")) from None
    return value


class _MemberTable(_Table):
    endpoint: EndpointName
    # The member's share counts this many times its limits (default 1).
    weight: PositiveNumber = 1.0
    # The request's model → the name this member knows it by.
    models: dict[Annotated[str, Field(min_length=1)], Annotated[str, Field(min_length=1)]] = {}

    def to_member(self) -> PoolMember:
        return PoolMember(self.endpoint, self.weight, dict(self.models))


def _member_table(value: Any) -> Any:
    """A member named alone ("NAME") is the table {endpoint = "NAME"}."""
    return {"endpoint": value} if isinstance(value, str) else value


def _check_members(value: list[_MemberTable]) -> list[_MemberTable]:
    if not value:
        raise _fail("name at least one endpoint")
    names = [item.endpoint for item in value]
    if twice := sorted({name for name in names if names.count(name) > 1}):
        raise _fail(f'lists "{twice[0]}" twice; name each endpoint once')
    return value


class _PoolTable(_Table):
    # Endpoint names, or tables {endpoint = "NAME", weight = 2, models = {...}}.
    members: Annotated[
        list[Annotated[_MemberTable, BeforeValidator(_member_table)]],
        AfterValidator(_check_members),
    ]

    def to_pool(self, name: str, source: str) -> Pool:
        return Pool(name, tuple(item.to_member() for item in self.members), source)


def _check_notify_url(value: str) -> str:
    if problem := notify_url_problem(value):
        raise _fail(problem)
    return value


class _NotifyTable(_Table):
    # The webhook URL, or the variable that holds it (for a URL that carries a token).
    url: Annotated[str, AfterValidator(_check_notify_url)] | None = None
    url_env: EnvName | None = None

    @model_validator(mode="after")
    def _one_of(self) -> _NotifyTable:
        if (self.url is None) == (self.url_env is None):
            raise _fail(
                "give url (the webhook URL) or url_env (the environment variable that holds "
                "it, for a URL with a token in it), one of them"
            )
        return self


class _ConfigFile(_Table):
    default_endpoint: EndpointName | None = None
    # How long ended batches are kept, e.g. "30d"; `batchrun prune` deletes older ones.
    retention: Annotated[str, AfterValidator(_check_retention)] | None = None
    endpoints: dict[EndpointName, _EndpointTable] = {}
    pools: dict[EndpointName, _PoolTable] = {}
    prices: dict[Annotated[str, Field(min_length=1)], _PriceTable] = {}
    notify: _NotifyTable | None = None
    # The batch lane's prompt-cache groups: "auto" (the 1-hour TTL) or "keep" (as written).
    cache_ttl: Literal["auto", "keep"] | None = None


_MODELS: dict[int, type[BaseModel]] = {0: _ConfigFile, 2: _EndpointTable}
# By the length of an unknown key's location: pools.NAME.KEY, pools.NAME.members[i].KEY.
_POOL_MODELS: dict[int, type[BaseModel]] = {3: _PoolTable, 5: _MemberTable}


# -- pydantic errors → one line each ------------------------------------------------------


def _key(loc: Sequence[int | str]) -> str:
    """A location as the user would write it in TOML: endpoints.x.limits."*".rpm."""
    parts: list[str] = []
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int) and parts:
            parts[-1] += f"[{part}]"
            continue
        text = str(part)
        parts.append(text if _BARE_KEY_RE.fullmatch(text) else '"' + text.replace('"', '\\"') + '"')
    return ".".join(parts)


def _describe(error: ErrorDetails) -> str:
    kind, loc = error["type"], error["loc"]
    if kind == "config":
        return error["msg"]
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind == "missing":
        return "required"
    if kind == "literal_error":
        expected = str(error.get("ctx", {}).get("expected", "")).replace("'", '"')
        return f"must be {expected}, not {_show(error['input'])}"
    if kind in ("greater_than", "greater_than_equal"):
        limit = error.get("ctx", {}).get("gt", error.get("ctx", {}).get("ge"))
        bound = "greater than" if kind == "greater_than" else "at least"
        return f"must be {bound} {limit:g}" if isinstance(limit, int | float) else error["msg"]
    if kind in _TYPE_NAMES:
        return f"must be {_TYPE_NAMES[kind]}, not {_toml_type(error['input'])}"
    return str(error["msg"])


def _unknown_key(loc: Sequence[int | str]) -> str:
    key = str(loc[-1])
    # At the top level or in an endpoint's table, where a key would sit next to its URL.
    if key.lower() in _KEY_LIKE and len(loc) in (1, 3):
        endpoint = str(loc[1]) if len(loc) == 3 else "NAME"
        variable = re.sub(r"[^A-Z0-9]+", "_", endpoint.upper()).strip("_") + "_API_KEY"
        where = "" if len(loc) == 3 else " in [endpoints.NAME]"
        return (
            "API keys do not belong in the config file; export the key as an environment "
            f'variable and name it with api_key_env = "{variable}"{where}'
        )
    model = {
        "prices": _PriceTable,
        "pools": _POOL_MODELS.get(len(loc)),
        "notify": _NotifyTable,
    }.get(str(loc[0]), _MODELS.get(len(loc) - 1))
    known = sorted(model.model_fields) if model is not None else []
    if close := difflib.get_close_matches(key, known, n=1, cutoff=0.6):
        return f'unknown key; did you mean "{close[0]}"?'
    return f"unknown key; known keys: {', '.join(known)}"


def _show(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return "a date or time"


def load_endpoints(config_file: Path | None, *, env: Mapping[str, str], cwd: Path) -> Endpoints:
    """The endpoints of this invocation: built-in, then the config file that ``--config``
    (``config_file``), the environment or ``cwd`` points to, then the environment."""
    return endpoints_of(load_settings(find_config_file(config_file, env, cwd)), env)


def endpoints_of(settings: Settings, env: Mapping[str, str]) -> Endpoints:
    """The built-in endpoints with ``settings``' tables and the environment applied."""
    return resolve_endpoints(
        settings.endpoints,
        env,
        config_path=settings.path,
        default_endpoint=settings.default_endpoint,
        pools=settings.pools,
    )


def prices_of(settings: Settings) -> PriceTable:
    """The price table: built-in prices, with the file's ``[prices."MODEL"]`` on top."""
    return PriceTable.with_overrides(settings.prices)
