"""How ``batchrun endpoints`` shows the endpoints: a few lines each (URLs are never cut short,
as a table would), or JSON. Key variables are named and said to be set or not; their values
are never shown. The limits learned from 429s that the database keeps are shown with their
age (the next run starts from them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from batchrun.dispatch.settings import DEFAULT_MAX_ATTEMPTS
from batchrun.limits.dimensions import RateLimits
from batchrun.transport.auth import AUTH_STYLES
from batchrun.transport.endpoints import DEFAULT_TIMEOUT_S, Endpoints

if TYPE_CHECKING:
    from batchrun.store.rates import LearnedLimit


def _limits_text(limits: Mapping[str, RateLimits]) -> str:
    parts = []
    for model, value in sorted(limits.items(), key=lambda item: (item[0] == "*", item[0])):
        figures = [f"{amount:,g} {name}" for name, amount in value.items()]
        label = model if model != "*" else "other models" if len(limits) > 1 else "every model"
        parts.append(f"{label}: {', '.join(figures) or 'unlimited'}")
    return "; ".join(parts) or "none set"


def age_text(seconds: float) -> str:
    """An age in the largest whole unit: "40 s", "3 min", "5 h", "2 days"."""
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def learned_lines(endpoint: str, learned: Sequence[LearnedLimit], now: float) -> list[str]:
    """The limits learned for ``endpoint``'s models, one line each with its age at ``now``
    (Unix seconds)."""
    return [
        f"  learned:    {item.model}: {item.learned_per_min:,.0f} {item.dimension}"
        f" ({age_text(now - item.learned_at)} ago)"
        for item in learned
        if item.endpoint == endpoint
    ]


def _is_set(env: Mapping[str, str], variable: str | None) -> bool:
    return bool(variable and env.get(variable, "").strip())


def endpoints_lines(
    known: Endpoints,
    env: Mapping[str, str],
    learned: Sequence[LearnedLimit] = (),
    now: float = 0.0,
) -> list[str]:
    """Every endpoint as a few lines of text (URLs are never cut short, as a table would).
    Key variables are named and said to be set or not; their values are never shown.
    ``learned``: the limits the database keeps, shown with their age at ``now`` (Unix s)."""
    lines = []
    for name, endpoint in sorted(known.by_name.items()):
        lines.append(f"{name} (default)" if name == known.default else name)
        url = "in-process" if endpoint.in_process else endpoint.messages_url
        lines.append(f"  url:        {url}")
        auth = endpoint.auth
        if AUTH_STYLES.get(auth).needs_key and endpoint.api_key_env:
            state = "set" if _is_set(env, endpoint.api_key_env) else "not set"
            lines.append(f"  auth:       {auth}, key from {endpoint.api_key_env} ({state})")
        else:
            lines.append(f"  auth:       {auth}")
        for header, variable in endpoint.headers_env.items():
            state = "set" if _is_set(env, variable) else "not set"
            lines.append(f"  header:     {header} from {variable} ({state})")
        lines.append(f"  limits:     {_limits_text(endpoint.limits)}")
        if endpoint.endpoint_limits:
            figures = [f"{amount:,g} {name}" for name, amount in endpoint.endpoint_limits.items()]
            lines.append(f"  all models: {', '.join(figures)} together")
        lines.extend(learned_lines(name, learned, now))
        timeout_s = endpoint.timeout_s or DEFAULT_TIMEOUT_S
        attempts = endpoint.max_attempts or DEFAULT_MAX_ATTEMPTS
        lines.append(f"  requests:   timeout {timeout_s:g} s, up to {attempts} attempts")
        if endpoint.extra_body:
            lines.append(f"  extra_body: {', '.join(endpoint.extra_body)}")
        lines.append(f"  defined in: {' + '.join(endpoint.sources)}")
    for name, pool in sorted(known.pools.items()):
        lines.append(f"{name} (pool, default)" if name == known.default else f"{name} (pool)")
        for member in pool.members:
            details = [f"weight {member.weight:g}"] if member.weight != 1 else []
            details += [f"{model} as {alias}" for model, alias in member.models.items()]
            more = f" ({', '.join(details)})" if details else ""
            lines.append(f"  member:     {member.endpoint}{more}")
        lines.append(f"  defined in: {pool.source}")
    lines.append(f"default endpoint: {known.default} (from {known.default_source})")
    lines.append(f"config file: {known.config_path or 'none found'}")
    return lines


def endpoints_json(
    known: Endpoints,
    env: Mapping[str, str],
    learned: Sequence[LearnedLimit] = (),
    now: float = 0.0,
) -> dict[str, Any]:
    """What `batchrun endpoints --json` prints. Never a key: only variable names and
    whether each is set. ``learned`` as for :func:`endpoints_lines`."""

    data = []
    for name, endpoint in sorted(known.by_name.items()):
        needs_key = AUTH_STYLES.get(endpoint.auth).needs_key
        data.append(
            {
                "name": name,
                "url": endpoint.messages_url,
                "base_url": endpoint.base_url,
                "messages_path": endpoint.messages_path,
                "in_process": endpoint.in_process,
                "auth": endpoint.auth,
                "api_key_env": endpoint.api_key_env if needs_key else None,
                "api_key_set": _is_set(env, endpoint.api_key_env) if needs_key else None,
                "headers": dict(endpoint.headers),
                "headers_env": {
                    header: {"variable": variable, "set": _is_set(env, variable)}
                    for header, variable in endpoint.headers_env.items()
                },
                "extra_body": dict(endpoint.extra_body),
                "timeout_s": endpoint.timeout_s or DEFAULT_TIMEOUT_S,
                "max_attempts": endpoint.max_attempts or DEFAULT_MAX_ATTEMPTS,
                "limits": {model: value.as_json() for model, value in endpoint.limits.items()},
                "endpoint_limits": endpoint.endpoint_limits.as_json(),
                "learned_limits": [
                    {
                        "model": item.model,
                        "dimension": item.dimension,
                        "per_min": item.learned_per_min,
                        "age_s": round(max(now - item.learned_at, 0.0), 1),
                    }
                    for item in learned
                    if item.endpoint == name
                ],
                "default": name == known.default,
                "sources": list(endpoint.sources),
            }
        )
    return {
        "default_endpoint": known.default,
        "default_from": known.default_source,
        "config_file": str(known.config_path) if known.config_path else None,
        "data": data,
        "pools": [
            {
                "name": name,
                "members": [
                    {"endpoint": m.endpoint, "weight": m.weight, "models": dict(m.models)}
                    for m in pool.members
                ],
                "default": name == known.default,
                "source": pool.source,
            }
            for name, pool in sorted(known.pools.items())
        ],
    }
