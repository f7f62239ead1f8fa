"""Where requests go: the built-in endpoints, and how the config file and the environment
change them.

An endpoint is stored with each batch by name, never with its key: the key is looked up in
the environment (passed in by the CLI) when a run starts. Each setting is resolved in this
order, first found wins: command-line flag, environment, config file, built-in default.
Flags are applied by the caller (``batchrun.ops.runner``); the config file is read by
``batchrun.config.file``; this module applies the built-ins, the file's tables and the
environment.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from batchrun.errors import ConfigError, MissingApiKeyError, UnknownEndpointError
from batchrun.limits.dimensions import RateLimits
from batchrun.limits.families import entry_for
from batchrun.records import Pool
from batchrun.structured.schemas import DEFAULT_STRUCTURED_MODE, StructuredMode
from batchrun.transport.auth import AUTH_STYLES, RequestHeaders, request_headers

# A long generation (tens of thousands of output tokens) can take many minutes without
# streaming; the official SDK's own ceiling for non-streaming calls is 600 s.
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0
# Anthropic's count_tokens limit at its first usage tier; higher tiers allow more (config:
# count_tokens_rpm).
DEFAULT_COUNT_TOKENS_RPM = 100.0
# The largest answer read, after decompression: far above any real Message (a 128k-token
# reply is well under 1 MB), low enough that an endless body cannot exhaust memory.
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
ANTHROPIC_VERSION = "2023-06-01"
ANTHROPIC_DEFAULT_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_BASE_URL_ENV = "ANTHROPIC_BASE_URL"
ANTHROPIC_API_KEY_ENV = "ANTHROPIC_API_KEY"
ANTHROPIC_AUTH_TOKEN_ENV = "ANTHROPIC_AUTH_TOKEN"
# Names the endpoint `submit` uses when --endpoint is not given.
ENDPOINT_ENV = "BATCHRUN_ENDPOINT"
SIMULATOR = "simulator"
DEFAULT_ENDPOINT = "anthropic"
BUILTIN = "built-in"
# Langdock documents 500 RPM and 60,000 TPM (input + output) per model and workspace.
LANGDOCK_LIMITS = RateLimits(rpm=500, tpm=60_000)
# A provider batch's size limits (Anthropic's, also the default for other batch APIs), the
# share of the list price a batch pays, and how long one typically takes (Anthropic: "most
# batches finish within 1 hour"; AIMLAPI: "within up to 1 hour").
DEFAULT_BATCH_MAX_REQUESTS = 100_000
DEFAULT_BATCH_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_BATCH_DISCOUNT = 0.5
DEFAULT_BATCH_TYPICAL_S = 3600.0
# The bounds of one provider batch's results download, as a whole: far above what
# Anthropic's largest batch gives (100,000 results of a 256 MB batch; a few GB with long
# answers, read in minutes), low enough that an endless or trickling download ends.
DEFAULT_BATCH_RESULTS_MAX_BYTES = 16 * 1024**3
DEFAULT_BATCH_RESULTS_MAX_S = 4 * 3600.0
# The longest a provider keeps a batch processing before expiring what is left (Anthropic).
PROVIDER_BATCH_LIFETIME_S = 24 * 3600.0
ANTHROPIC_BATCH_PATH = "/v1/messages/batches"
AIMLAPI_BATCH_PATH = "/v1/batches"
# Settings the in-process simulator cannot take: it has no URL and checks no key.
_SIMULATOR_FIXED = ("base_url", "messages_path", "auth", "api_key_env")


@dataclass(frozen=True)
class BatchApi:
    """An endpoint's server-side batch API (the batch lane): its style (a name in
    ``batchrun.transport.batch_api.BATCH_API_STYLES``), the path of its batches collection,
    the most requests and bytes one provider batch takes, the share of the list price it
    bills, how long a batch typically takes (for planning and the auto lane), the bounds
    of one batch's results download (bytes and seconds, the whole download), and what the
    provider's prompt-cache lifetimes are, as a share of Anthropic's 5 minutes and 1 hour
    (``cache_ttl_scale``; a simulator run with ``--cache-ttl-scale`` sets it)."""

    style: str = "anthropic"
    path: str = ANTHROPIC_BATCH_PATH
    max_requests: int = DEFAULT_BATCH_MAX_REQUESTS
    max_bytes: int = DEFAULT_BATCH_MAX_BYTES
    discount: float = DEFAULT_BATCH_DISCOUNT
    typical_s: float = DEFAULT_BATCH_TYPICAL_S
    results_max_bytes: int = DEFAULT_BATCH_RESULTS_MAX_BYTES
    results_max_s: float = DEFAULT_BATCH_RESULTS_MAX_S
    cache_ttl_scale: float = 1.0


@dataclass(frozen=True)
class EndpointSettings:
    """One ``[endpoints.NAME]`` table of the config file. None and empty mean "not set"."""

    name: str
    base_url: str | None = None
    messages_path: str | None = None
    auth: str | None = None
    api_key_env: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    headers_env: Mapping[str, str] = field(default_factory=dict)
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None
    max_attempts: int | None = None
    max_response_bytes: int | None = None
    count_tokens_rpm: float | None = None
    stream_threshold_tokens: int | None = None
    structured_outputs: StructuredMode | None = None
    limits: Mapping[str, RateLimits] = field(default_factory=dict)
    endpoint_limits: RateLimits = field(default_factory=RateLimits)
    # batch_api ("anthropic", "aimlapi" or "none") and the batch_* settings beside it.
    batch_api: str | None = None
    batch_path: str | None = None
    batch_max_requests: int | None = None
    batch_max_bytes: int | None = None
    batch_discount: float | None = None
    batch_typical_s: float | None = None
    batch_results_max_bytes: int | None = None
    batch_results_max_s: float | None = None
    batch_cache_ttl_scale: float | None = None
    fields_set: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Endpoint:
    """An Anthropic-compatible Messages endpoint."""

    name: str
    base_url: str
    messages_path: str = "/v1/messages"
    # An auth style's name (batchrun.transport.auth).
    auth: str = "x-api-key"
    api_key_env: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Header name → the environment variable holding its value (a second credential).
    headers_env: Mapping[str, str] = field(default_factory=dict)
    # Merged into every request body; the request's own params win.
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    # None: the run's flag or batchrun's default decides.
    timeout_s: float | None = None
    max_attempts: int | None = None
    # The largest answer read (after decompression); a larger one errors the request.
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    # How many /v1/messages/count_tokens calls a minute `run --count-tokens` makes at most.
    count_tokens_rpm: float = DEFAULT_COUNT_TOKENS_RPM
    # Requests whose max_tokens is above this are streamed (0: every request); None: the
    # official SDK's rule (batchrun.transport.streaming.stream_threshold_tokens).
    stream_threshold_tokens: int | None = None
    # How a request asks for a structured answer (a template's [output]): "native"
    # (output_config.format, the Messages API's structured outputs) or "tool" (a forced tool
    # call, which gateways that drop output_config still pass on).
    structured_outputs: StructuredMode = DEFAULT_STRUCTURED_MODE
    # Limits per model, per family pattern ("claude-sonnet-4*": one limit the family shares),
    # and "*": for each model no other entry covers (batchrun.limits.families).
    limits: Mapping[str, RateLimits] = field(default_factory=dict)
    # Limits across all the models together: every request takes from these as well as from
    # its model's (batchrun.limits.limiter).
    endpoint_limits: RateLimits = field(default_factory=RateLimits)
    # The server-side batch API (the batch lane); None: the endpoint has none.
    batch_api: BatchApi | None = None
    # Where the definition came from, in order: "built-in", a config file, a variable.
    sources: tuple[str, ...] = (BUILTIN,)

    @property
    def messages_url(self) -> str:
        return self.base_url.rstrip("/") + "/" + self.messages_path.lstrip("/")

    @property
    def batches_url(self) -> str:
        """The URL of the batch API's collection; ValueError without one."""
        if self.batch_api is None:
            raise ValueError(f"endpoint {self.name} has no batch API")
        return self.base_url.rstrip("/") + "/" + self.batch_api.path.lstrip("/")

    @property
    def in_process(self) -> bool:
        """True for the built-in simulator, which runs inside batchrun."""
        return self.name == SIMULATOR

    def limits_for(self, model: str) -> RateLimits | None:
        """The limits of ``model`` here: its own, else its family's (the longest pattern that
        matches it, shared with the family's other models), else those of "*", else None."""
        entry = entry_for(model, self.limits)
        return None if entry is None else self.limits[entry]


def _langdock(region: str) -> Endpoint:
    return Endpoint(
        name=f"langdock-{region}",
        base_url="https://api.langdock.com",
        messages_path=f"/anthropic/{region}/v1/messages",
        auth="bearer",
        api_key_env="LANGDOCK_API_KEY",
        headers={"anthropic-version": ANTHROPIC_VERSION},
        limits={"*": LANGDOCK_LIMITS},
        # Its docs do not say that output_config is passed on; a forced tool call is.
        structured_outputs="tool",
    )


def builtin_endpoints(env: Mapping[str, str]) -> dict[str, Endpoint]:
    """The endpoints batchrun knows without a config file, as the environment sets them."""
    builtins = [
        Endpoint(
            name=DEFAULT_ENDPOINT,
            base_url=ANTHROPIC_DEFAULT_BASE_URL,
            auth="x-api-key",
            api_key_env=ANTHROPIC_API_KEY_ENV,
            headers={"anthropic-version": ANTHROPIC_VERSION},
            batch_api=BatchApi(),
        ),
        _langdock("eu"),
        _langdock("us"),
        Endpoint(
            name="aimlapi",
            base_url="https://api.aimlapi.com",
            messages_path="/messages",
            auth="bearer",
            api_key_env="AIMLAPI_API_KEY",
            headers={"anthropic-version": ANTHROPIC_VERSION},
            batch_api=BatchApi(style="aimlapi", path=AIMLAPI_BATCH_PATH),
            # Its docs do not say that output_config is passed on; a forced tool call is.
            structured_outputs="tool",
        ),
        Endpoint(
            name=SIMULATOR,
            base_url="http://simulator.invalid",
            auth="none",
            headers={"anthropic-version": ANTHROPIC_VERSION},
            batch_api=BatchApi(),
        ),
    ]
    return {endpoint.name: _apply_env(endpoint, env) for endpoint in builtins}


def _apply_env(endpoint: Endpoint, env: Mapping[str, str]) -> Endpoint:
    """As the official SDK does: ANTHROPIC_BASE_URL redirects the anthropic endpoint, and
    ANTHROPIC_AUTH_TOKEN authenticates it as a bearer token when ANTHROPIC_API_KEY is not
    set (an SDK given both sends both; batchrun sends the API key)."""
    if endpoint.name != DEFAULT_ENDPOINT:
        return endpoint
    if url := env.get(ANTHROPIC_BASE_URL_ENV):
        endpoint = replace(
            endpoint, base_url=url, sources=(*endpoint.sources, ANTHROPIC_BASE_URL_ENV)
        )
    key_variable = endpoint.api_key_env or ""
    if (
        endpoint.auth == "x-api-key"
        and key_variable == ANTHROPIC_API_KEY_ENV
        and not env.get(key_variable, "").strip()
        and env.get(ANTHROPIC_AUTH_TOKEN_ENV, "").strip()
    ):
        endpoint = replace(
            endpoint,
            auth="bearer",
            api_key_env=ANTHROPIC_AUTH_TOKEN_ENV,
            sources=(*endpoint.sources, ANTHROPIC_AUTH_TOKEN_ENV),
        )
    return endpoint


@dataclass(frozen=True)
class Endpoints:
    """Every endpoint known to this invocation, and the one ``submit`` uses by default."""

    by_name: Mapping[str, Endpoint]
    default: str
    default_source: str
    config_path: Path | None = None
    # Pools by name: several endpoints used as one (batchrun.transport.pools).
    pools: Mapping[str, Pool] = field(default_factory=dict)

    def get(self, name: str) -> Endpoint:
        """The endpoint called ``name``; UnknownEndpointError naming the known ones if none."""
        if name not in self.by_name:
            pools = f"; pools: {', '.join(sorted(self.pools))}" if self.pools else ""
            raise UnknownEndpointError(
                f"unknown endpoint {name!r}{did_you_mean(name, [*self.by_name, *self.pools])}; "
                f"known endpoints: {', '.join(sorted(self.by_name))}"
                f"{pools} (`batchrun endpoints` lists them; a config file can define more)",
                endpoint=name,
            )
        return self.by_name[name]

    def check(self, name: str) -> str:
        """``name`` if it is an endpoint or a pool (wherever an endpoint is accepted, a pool
        is too); UnknownEndpointError naming the known ones if neither."""
        if name in self.pools:
            return name
        return self.get(name).name

    def for_planning(self, name: str) -> Endpoint:
        """The endpoint ``name``; for a pool, one endpoint standing for all its members, whose
        limits per model are the sums of theirs (a dimension some member does not limit is
        unlimited), for `estimate`."""
        pool = self.pools.get(name)
        if pool is None:
            return self.get(name)
        members = [(member, self.get(member.endpoint)) for member in pool.members]
        models = {model for _, endpoint in members for model in endpoint.limits}
        combined: dict[str, RateLimits] = {}
        for model in sorted(models):
            each = [ep.limits_for(m.model_for(model)) or RateLimits() for m, ep in members]
            summed = {
                dimension: sum(limits.get(dimension) or 0.0 for limits in each)
                for dimension in {d for limits in each for d, _ in limits.items()}
                if all(limits.get(dimension) is not None for limits in each)
            }
            if summed:
                combined[model] = RateLimits(summed)
        return Endpoint(name=pool.name, base_url="", limits=combined, sources=(pool.source,))

    def structured_outputs(self, name: str) -> StructuredMode:
        """How requests for ``name`` ask for structured answers: the endpoint's setting; for
        a pool, ``tool`` unless every member takes ``native`` (a request may go to any)."""
        modes = {endpoint.structured_outputs for endpoint in self.members(name).values()}
        return "native" if modes == {"native"} else "tool"

    def members(self, name: str) -> dict[str, Endpoint]:
        """The endpoints a batch on ``name`` is sent to: a pool's members, or the one."""
        pool = self.pools.get(name)
        if pool is None:
            return {name: self.get(name)}
        return {member: self.get(member) for member in pool.endpoint_names}


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'NAME'?)`` naming the known names close to a mistyped one (all of
    those as close as the closest, as with langdock-eu and langdock-us), or ""."""
    names = sorted(set(known))
    scored = sorted(
        ((difflib.SequenceMatcher(None, name.lower(), k.lower()).ratio(), k) for k in names),
        reverse=True,
    )
    if not scored or scored[0][0] < 0.6:
        return ""
    best = scored[0][0]
    close = sorted(k for score, k in scored if score >= best - 1e-9)
    return f" (did you mean {' or '.join(repr(k) for k in close)}?)"


def resolve_endpoints(
    tables: Mapping[str, EndpointSettings],
    env: Mapping[str, str],
    *,
    config_path: Path | None = None,
    default_endpoint: str | None = None,
    pools: Mapping[str, Pool] | None = None,
) -> Endpoints:
    """The built-in endpoints, changed or added to by the config file's ``tables`` (read from
    ``config_path``), then by the environment; and the file's ``pools`` of them. Raises
    ConfigError naming the file and key for a definition that cannot work (a new endpoint
    without base_url, a key-less auth style, a pool of unknown endpoints...)."""
    resolved = builtin_endpoints({})
    for name, table in tables.items():
        resolved[name] = _overlay(resolved.get(name), table, config_path)
    resolved = {name: _apply_env(endpoint, env) for name, endpoint in resolved.items()}
    pools = dict(pools or {})
    _check_pools(pools, resolved, config_path)
    names = sorted(resolved) + sorted(pools)
    default, source = DEFAULT_ENDPOINT, BUILTIN
    if default_endpoint is not None:
        if default_endpoint not in resolved and default_endpoint not in pools:
            raise _file_error(
                config_path,
                "default_endpoint",
                f'unknown endpoint "{default_endpoint}"{did_you_mean(default_endpoint, names)}; '
                f"known endpoints and pools: {', '.join(names)}",
            )
        default, source = default_endpoint, str(config_path)
    if named := env.get(ENDPOINT_ENV, "").strip():
        if named not in resolved and named not in pools:
            raise UnknownEndpointError(
                f"{ENDPOINT_ENV} names unknown endpoint {named!r}{did_you_mean(named, names)}; "
                f"known endpoints and pools: {', '.join(names)}",
                endpoint=named,
            )
        default, source = named, ENDPOINT_ENV
    return Endpoints(resolved, default, source, config_path, pools)


def _check_pools(
    pools: Mapping[str, Pool], endpoints: Mapping[str, Endpoint], path: Path | None
) -> None:
    """A pool's name must not be an endpoint's, and its members must be endpoints."""
    for name, pool in pools.items():
        if name in endpoints:
            raise _file_error(
                path,
                f"pools.{name}",
                f'"{name}" is already an endpoint; give the pool a name of its own',
            )
        for index, member in enumerate(pool.members):
            if member.endpoint not in endpoints:
                known = ", ".join(sorted(endpoints))
                raise _file_error(
                    path,
                    f"pools.{name}.members[{index}]",
                    f'unknown endpoint "{member.endpoint}"; known endpoints: {known}'
                    + (" (a pool cannot hold another pool)" if member.endpoint in pools else ""),
                )


def _file_error(path: Path | None, key: str, problem: str) -> ConfigError:
    """A ConfigError naming the config file and the key: ``FILE: KEY: problem``."""
    return ConfigError(f"{path}: {key}: {problem}")


def _overlay(base: Endpoint | None, table: EndpointSettings, path: Path | None) -> Endpoint:
    """``base`` (a built-in, or None for a new endpoint) with the file's settings on top.

    Scalars replace the built-in's; ``headers``, ``headers_env``, ``extra_body`` and
    ``limits`` are merged name by name, each model's limits replacing that model's whole;
    ``endpoint_limits`` dimension by dimension.
    """
    prefix = f"endpoints.{table.name}"
    if base is None:
        if table.base_url is None:
            raise _file_error(
                path,
                f"{prefix}.base_url",
                "required for a new endpoint (built-in endpoints: "
                f"{', '.join(sorted(builtin_endpoints({})))})",
            )
        # Anthropic-compatible gateways expect the version header, as the SDK sends it.
        base = Endpoint(
            name=table.name,
            base_url=table.base_url,
            headers={"anthropic-version": ANTHROPIC_VERSION},
            sources=(),
        )
    elif base.in_process and (fixed := [k for k in _SIMULATOR_FIXED if k in table.fields_set]):
        raise _file_error(
            path,
            f"{prefix}.{fixed[0]}",
            "the built-in simulator runs in-process and cannot change this; to reach "
            "`batchrun simulate` on a socket, define a new endpoint with its base_url",
        )
    merged = replace(
        base,
        base_url=table.base_url or base.base_url,
        messages_path=table.messages_path or base.messages_path,
        auth=table.auth or base.auth,
        api_key_env=table.api_key_env or base.api_key_env,
        headers={**base.headers, **table.headers},
        headers_env={**base.headers_env, **table.headers_env},
        extra_body={**base.extra_body, **table.extra_body},
        timeout_s=table.timeout_s if table.timeout_s is not None else base.timeout_s,
        max_attempts=table.max_attempts if table.max_attempts is not None else base.max_attempts,
        max_response_bytes=table.max_response_bytes or base.max_response_bytes,
        count_tokens_rpm=table.count_tokens_rpm or base.count_tokens_rpm,
        stream_threshold_tokens=(
            base.stream_threshold_tokens
            if table.stream_threshold_tokens is None
            else table.stream_threshold_tokens
        ),
        structured_outputs=table.structured_outputs or base.structured_outputs,
        limits={**base.limits, **table.limits},
        endpoint_limits=table.endpoint_limits.merged_over(base.endpoint_limits),
        batch_api=_batch_api(base.batch_api, table),
        sources=(*base.sources, str(path)),
    )
    batch_settings = [
        key for key in table.fields_set if key.startswith("batch_") and key != "batch_api"
    ]
    if merged.batch_api is None and batch_settings and table.batch_api != "none":
        raise _file_error(
            path,
            f"{prefix}.{sorted(batch_settings)[0]}",
            'this endpoint has no batch API; set batch_api = "anthropic" (or "aimlapi") too',
        )
    if AUTH_STYLES.get(merged.auth).needs_key and merged.api_key_env is None:
        raise _file_error(
            path,
            f"{prefix}.api_key_env",
            f'required with auth = "{merged.auth}": the name of the environment variable '
            'that holds the key (or set auth = "none")',
        )
    return merged


def _batch_api(base: BatchApi | None, table: EndpointSettings) -> BatchApi | None:
    """The endpoint's batch API: the built-in's (or none) with the file's batch_* settings on
    top. ``batch_api = "none"`` removes it; a style change starts from that style's path."""
    if table.batch_api == "none":
        return None
    if table.batch_api is not None and (base is None or table.batch_api != base.style):
        default_path = AIMLAPI_BATCH_PATH if table.batch_api == "aimlapi" else ANTHROPIC_BATCH_PATH
        base = BatchApi(style=table.batch_api, path=default_path)
    settings = (
        table.batch_path,
        table.batch_max_requests,
        table.batch_max_bytes,
        table.batch_discount,
        table.batch_typical_s,
        table.batch_results_max_bytes,
        table.batch_results_max_s,
        table.batch_cache_ttl_scale,
    )
    if base is None:
        return None
    if all(value is None for value in settings):
        return base
    return replace(
        base,
        path=table.batch_path or base.path,
        max_requests=table.batch_max_requests or base.max_requests,
        max_bytes=table.batch_max_bytes or base.max_bytes,
        discount=base.discount if table.batch_discount is None else table.batch_discount,
        typical_s=table.batch_typical_s or base.typical_s,
        results_max_bytes=table.batch_results_max_bytes or base.results_max_bytes,
        results_max_s=table.batch_results_max_s or base.results_max_s,
        cache_ttl_scale=table.batch_cache_ttl_scale or base.cache_ttl_scale,
    )


def auth_headers(endpoint: Endpoint, env: Mapping[str, str]) -> RequestHeaders:
    """The request headers for ``endpoint``, with its key and its ``headers_env`` values from
    the environment, and which values are secret.

    Raises MissingApiKeyError naming the variable when a key or header value is not set.
    """
    from_env = {
        header: _required(env, variable, f"header {header} of endpoint {endpoint.name!r}")
        for header, variable in endpoint.headers_env.items()
    }
    key = None
    if AUTH_STYLES.get(endpoint.auth).needs_key:
        key = _required(
            env, endpoint.api_key_env or "", f"the API key for endpoint {endpoint.name!r}"
        )
    return request_headers(style=endpoint.auth, key=key, fixed=endpoint.headers, from_env=from_env)


def _required(env: Mapping[str, str], variable: str, what: str) -> str:
    value = env.get(variable, "").strip()
    if not value:
        raise MissingApiKeyError(
            f"{variable} is not set; export it with {what} "
            "(or try batchrun offline with --endpoint simulator)",
            variable=variable,
            what=what,
        )
    return value
