"""Where requests go: the built-in endpoints and how to authenticate to them.

An endpoint is stored with each batch by name, never with its key: the key is looked up in
the environment (passed in by the CLI) when a run starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from batchrun.errors import MissingApiKeyError, UnknownEndpointError
from batchrun.limiter import RateLimits

AuthStyle = Literal["x-api-key", "bearer", "none"]
ANTHROPIC_VERSION = "2023-06-01"
ANTHROPIC_DEFAULT_BASE_URL = "https://api.anthropic.com"
SIMULATOR = "simulator"
DEFAULT_ENDPOINT = "anthropic"


@dataclass(frozen=True)
class Endpoint:
    """An Anthropic-compatible Messages endpoint."""

    name: str
    base_url: str
    messages_path: str = "/v1/messages"
    auth: AuthStyle = "x-api-key"
    api_key_env: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Limits per model; the key "*" applies to every model not named.
    limits: Mapping[str, RateLimits] = field(default_factory=dict)

    @property
    def messages_url(self) -> str:
        return self.base_url.rstrip("/") + "/" + self.messages_path.lstrip("/")

    @property
    def in_process(self) -> bool:
        """True for the built-in simulator, which runs inside batchrun."""
        return self.name == SIMULATOR


def builtin_endpoints(env: Mapping[str, str]) -> dict[str, Endpoint]:
    """The endpoints batchrun knows without a config file."""
    return {
        DEFAULT_ENDPOINT: Endpoint(
            name=DEFAULT_ENDPOINT,
            # As the official SDK does, ANTHROPIC_BASE_URL redirects the default endpoint.
            base_url=env.get("ANTHROPIC_BASE_URL") or ANTHROPIC_DEFAULT_BASE_URL,
            auth="x-api-key",
            api_key_env="ANTHROPIC_API_KEY",
            headers={"anthropic-version": ANTHROPIC_VERSION},
        ),
        SIMULATOR: Endpoint(
            name=SIMULATOR,
            base_url="http://simulator.invalid",
            auth="none",
            headers={"anthropic-version": ANTHROPIC_VERSION},
        ),
    }


def find_endpoint(name: str, env: Mapping[str, str]) -> Endpoint:
    """The endpoint called ``name``; UnknownEndpointError naming the known ones if none."""
    known = builtin_endpoints(env)
    if name not in known:
        raise UnknownEndpointError(
            f"unknown endpoint {name!r}; known endpoints: {', '.join(sorted(known))}"
        )
    return known[name]


def auth_headers(endpoint: Endpoint, env: Mapping[str, str]) -> dict[str, str]:
    """The request headers for ``endpoint``, including its key from the environment."""
    headers = {"content-type": "application/json", **endpoint.headers}
    if endpoint.auth == "none":
        return headers
    key = env.get(endpoint.api_key_env or "", "").strip()
    if not key:
        raise MissingApiKeyError(
            f"{endpoint.api_key_env} is not set; export it with the API key for endpoint "
            f"{endpoint.name!r} (or try batchrun offline with --endpoint simulator)"
        )
    if endpoint.auth == "bearer":
        headers["authorization"] = f"Bearer {key}"
    else:
        headers["x-api-key"] = key
    return headers
