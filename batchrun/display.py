"""Views for the terminal (rich tables) and the JSON of `batchrun endpoints --json`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from rich.table import Table

from batchrun.config import DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_S
from batchrun.dispatcher import RunReport
from batchrun.endpoints import Endpoints
from batchrun.limiter import RateLimits
from batchrun.reader import MAX_PRINTED_PROBLEMS
from batchrun.records import BatchSummary


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def _status(batch: BatchSummary) -> str:
    status = batch.processing_status
    return f"{status} (paused: {batch.paused_reason})" if batch.paused_reason else status


def batch_table(batch: BatchSummary) -> Table:
    """One batch: identity, state, counts and tokens."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    counts, tokens = batch.counts, batch.tokens
    rows = [
        ("batch", batch.id),
        ("name", batch.name or "-"),
        ("status", _status(batch)),
        ("endpoint", batch.endpoint),
        ("source", batch.source or "-"),
        ("requests", f"{counts.total:,}"),
        ("  processing", f"{counts.processing:,}"),
        ("  succeeded", f"{counts.succeeded:,}"),
        ("  errored", f"{counts.errored:,}"),
        ("  canceled", f"{counts.canceled:,}"),
        ("  expired", f"{counts.expired:,}"),
        ("input tokens", f"{tokens.input_tokens:,}"),
        ("output tokens", f"{tokens.output_tokens:,}"),
        ("cache write tokens", f"{tokens.cache_creation_input_tokens:,}"),
        ("cache read tokens", f"{tokens.cache_read_input_tokens:,}"),
        ("created", _when(batch.created_at)),
        ("expires", _when(batch.expires_at)),
        ("cancel initiated", _when(batch.cancel_initiated_at)),
        ("ended", _when(batch.ended_at)),
    ]
    for label, value in rows:
        table.add_row(label, value)
    return table


def batches_table(batches: Sequence[BatchSummary]) -> Table:
    """Many batches, one row each."""
    table = Table()
    for column in ("id", "name", "status", "endpoint", "requests", "done", "errored", "created"):
        table.add_column(
            column, justify="right" if column in ("requests", "done", "errored") else "left"
        )
    for batch in batches:
        counts = batch.counts
        table.add_row(
            batch.id,
            batch.name or "",
            _status(batch),
            batch.endpoint,
            f"{counts.total:,}",
            f"{counts.total - counts.processing:,}",
            f"{counts.errored:,}",
            _when(batch.created_at),
        )
    return table


def run_summary_lines(batches: Sequence[BatchSummary], report: RunReport) -> list[str]:
    """What a finished run prints: one line per batch, then the run's own figures."""
    lines = []
    for batch in batches:
        counts = batch.counts
        # A batch this run paused gets its reason on its own line below, once.
        state = "in_progress (paused)" if batch.id in report.paused else _status(batch)
        line = (
            f"{batch.id}: {state}; {counts.succeeded:,} succeeded, "
            f"{counts.errored:,} errored, {counts.canceled:,} canceled, "
            f"{counts.expired:,} expired, {counts.processing:,} processing"
        )
        lines.append(line)
    lines.append(
        f"this run: {report.sent:,} sent, {report.retried:,} retried, "
        f"{report.rate_limited:,} rate-limited"
    )
    for batch_id, reason in report.paused.items():
        lines.append(f"{batch_id} paused: {reason}; fix it, then `batchrun run {batch_id}`")
    return lines


def _limits_text(limits: Mapping[str, RateLimits]) -> str:
    parts = []
    for model, value in sorted(limits.items(), key=lambda item: (item[0] == "*", item[0])):
        figures = [
            f"{amount:,g} {unit}"
            for unit, amount in (
                ("rpm", value.rpm),
                ("tpm", value.tpm),
                ("itpm", value.itpm),
                ("otpm", value.otpm),
            )
            if amount is not None
        ]
        label = model if model != "*" else "other models" if len(limits) > 1 else "every model"
        parts.append(f"{label}: {', '.join(figures) or 'unlimited'}")
    return "; ".join(parts) or "none set"


def _is_set(env: Mapping[str, str], variable: str | None) -> bool:
    return bool(variable and env.get(variable, "").strip())


def endpoints_lines(known: Endpoints, env: Mapping[str, str]) -> list[str]:
    """Every endpoint as a few lines of text (URLs are never cut short, as a table would).
    Key variables are named and said to be set or not; their values are never shown."""
    lines = []
    for name, endpoint in sorted(known.by_name.items()):
        lines.append(f"{name} (default)" if name == known.default else name)
        url = "in-process" if endpoint.in_process else endpoint.messages_url
        lines.append(f"  url:        {url}")
        auth = endpoint.auth
        if auth != "none" and endpoint.api_key_env:
            state = "set" if _is_set(env, endpoint.api_key_env) else "not set"
            lines.append(f"  auth:       {auth}, key from {endpoint.api_key_env} ({state})")
        else:
            lines.append(f"  auth:       {auth}")
        for header, variable in endpoint.headers_env.items():
            state = "set" if _is_set(env, variable) else "not set"
            lines.append(f"  header:     {header} from {variable} ({state})")
        lines.append(f"  limits:     {_limits_text(endpoint.limits)}")
        timeout_s = endpoint.timeout_s or DEFAULT_TIMEOUT_S
        attempts = endpoint.max_attempts or DEFAULT_MAX_ATTEMPTS
        lines.append(f"  requests:   timeout {timeout_s:g} s, up to {attempts} attempts")
        if endpoint.extra_body:
            lines.append(f"  extra_body: {', '.join(endpoint.extra_body)}")
        lines.append(f"  defined in: {' + '.join(endpoint.sources)}")
    lines.append(f"default endpoint: {known.default} (from {known.default_source})")
    lines.append(f"config file: {known.config_path or 'none found'}")
    return lines


def endpoints_json(known: Endpoints, env: Mapping[str, str]) -> dict[str, Any]:
    """What `batchrun endpoints --json` prints. Never a key: only variable names and
    whether each is set."""

    data = []
    for name, endpoint in sorted(known.by_name.items()):
        needs_key = endpoint.auth != "none"
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
                "limits": {model: asdict(value) for model, value in endpoint.limits.items()},
                "default": name == known.default,
                "sources": list(endpoint.sources),
            }
        )
    return {
        "default_endpoint": known.default,
        "default_from": known.default_source,
        "config_file": str(known.config_path) if known.config_path else None,
        "data": data,
    }


def submit_summary_lines(batch: BatchSummary, skipped: Sequence[str]) -> list[str]:
    """What a successful submit prints: the problems of the lines --skip-invalid kept as
    errored results (as many as a refusal lists), then what was stored."""
    lines = [f"warning: {problem}" for problem in skipped[:MAX_PRINTED_PROBLEMS]]
    hidden = len(skipped) - MAX_PRINTED_PROBLEMS
    if hidden > 0:
        lines.append(f"warning: … and {hidden:,} more problem{'s' if hidden != 1 else ''}")
    stored = f"stored {batch.counts.total:,} requests as batch {batch.id}"
    if batch.counts.errored:
        stored += f"; {batch.counts.errored:,} invalid, recorded as errored results"
    return [*lines, stored]
