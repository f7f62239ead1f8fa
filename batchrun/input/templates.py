"""Prompt templates: a TOML file that turns each row of a table into a Messages request.

A template file holds ``model`` (or the submit's default model), ``max_tokens``, an optional
``system``, ``user`` (or ``messages``: a list of ``{role, content}``), an optional ``id`` (the
custom_id; default the row number), an optional ``[output]`` table (a JSON Schema the answer
must match, `batchrun.structured`), ``repair`` (repair sends per row at most for an answer
that does not match it), ``hash_long_ids``, and any other Messages parameter,
passed through unchanged (``temperature``, ``metadata``...).

A message's ``content`` is a template, or a list of parts: ``{type = "text", text =
"template"}`` and ``{type = "image", column = "photo"}`` (the cell holds the image's path or
URL) or ``{type = "image", source = "images/{{ sku }}.png"}`` (a template rendering to one);
`batchrun.input.image_parts` makes the image block (a URL source, or the file read, its type
checked, base64), relative paths starting at the table's folder.

``system``, ``user``, each message's ``content`` and ``id`` are Jinja2 templates, rendered in
a sandbox (`jinja2.sandbox.SandboxedEnvironment`: no attribute access to Python internals)
with strict undefined: a name that is neither a column nor ``row``/``row_number`` is an
error naming the row and the columns it has, never an empty string. Each column is a
variable; ``row["a column"]`` reaches names that are not identifiers; a null cell renders as
"" (``{{ x is none }}`` still tells). Autoescaping is off: the text goes to a model, not a
browser.

A rendered id that is not a valid custom_id (1-64 letters, digits, ``_``, ``-``) is refused
with its row, unless ``hash_long_ids = true``: then it is replaced by its readable part and a
hash of the whole id (`hashed_custom_id`), the same for the same rendered id every time.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeAlias

import jinja2
import orjson
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from batchrun.errors import ConfigError
from batchrun.input.image_parts import image_block
from batchrun.input.tables import columns_text
from batchrun.input.validation import (
    CUSTOM_ID_MAX_CHARS,
    MAX_LINE_BYTES,
    MESSAGE_ROLES,
    custom_id_fits,
)
from batchrun.input.wording import MIB, show
from batchrun.structured.schemas import (
    ANSWER_TOOL_NAME,
    StructuredMode,
    ask_for,
    check_schema,
)

# The keys a template file gives meaning to; any other key is a Messages parameter.
TEMPLATE_KEYS: Final = frozenset(
    {
        "model",
        "max_tokens",
        "system",
        "user",
        "messages",
        "id",
        "output",
        "hash_long_ids",
        "repair",
    }
)
# Params a template cannot pass through: batchrun writes them, or a batch forbids them.
_RESERVED_PARAMS: Final = frozenset({"stream"})
# A hashed custom_id: the rendered id's readable part, "-", then this many hex digits.
HASH_HEX_CHARS = 16
# The most characters one template part may render (a request line's cap: a part can never
# be more), and the largest number ``**`` may make, in bits.
MAX_RENDERED_CHARS: Final = MAX_LINE_BYTES
MAX_POWER_BITS: Final = 4096
_NOT_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
_UNDEFINED_NAME = re.compile(r"^'([^']*)' is undefined$")


@dataclass(frozen=True, slots=True)
class TextPart:
    """A ``{type = "text", text = "..."}`` part of a message's content."""

    text: jinja2.Template


@dataclass(frozen=True, slots=True)
class ImagePart:
    """A ``{type = "image", ...}`` part: the image's path or URL is the cell of ``column``,
    or what ``source`` renders to (`batchrun.input.image_parts`)."""

    column: str | None
    source: jinja2.Template | None


# A message's content: one template (the text), or a list of parts.
Content: TypeAlias = jinja2.Template | tuple[TextPart | ImagePart, ...]


@dataclass(frozen=True)
class Template:
    """A template file, compiled: what `render` needs for each row."""

    source: str
    params: dict[str, Any]
    system: jinja2.Template | None
    messages: tuple[tuple[str, Content], ...]
    custom_id: jinja2.Template | None
    hash_long_ids: bool = False
    output: dict[str, Any] | None = None
    # Repair sends per row at most for an answer that does not match ``output`` (None: the
    # submit's, by default 1).
    repair: int | None = None
    # Each message's name in messages: "user", or "messages[1]".
    message_names: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Rendered:
    """One row's request: its custom_id and params."""

    custom_id: str
    params: dict[str, Any]


def load_template(
    path: str | os.PathLike[str], *, schema: Mapping[str, Any] | None = None
) -> Template:
    """Read and compile the template file at ``path``; ``schema`` (``--schema FILE``) replaces
    its ``[output]``. Raises ConfigError naming the file and key for anything wrong in it."""
    source = os.fspath(path)
    try:
        text = Path(source).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such template file; check the path") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot be read ({exc.strerror})") from None
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: is not UTF-8 text; save the template as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: is not valid TOML ({exc})") from None
    return compile_template(data, source=source, schema=schema)


def template_from(
    template: str | os.PathLike[str] | Mapping[str, Any],
    *,
    schema: str | os.PathLike[str] | Mapping[str, Any] | None = None,
) -> Template:
    """A template file's path, or its parsed TOML, compiled; ``schema`` (a JSON file's path
    or the schema itself) replaces its ``[output]``."""
    output = None if schema is None else load_schema(schema)
    if isinstance(template, Mapping):
        return compile_template(template, source="<template>", schema=output)
    return load_template(template, schema=output)


def load_schema(schema: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """The answer schema given as ``--schema FILE`` (a JSON file) or as a mapping, checked to
    be a JSON Schema of an object; ConfigError naming the file and what is wrong."""
    if isinstance(schema, Mapping):
        return check_schema(schema, where="the schema")
    where = os.fspath(schema)
    try:
        data = orjson.loads(Path(where).read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such schema file; check the path") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read ({exc.strerror})") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(
            f"{where}: is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); a "
            "schema file holds one JSON Schema object"
        ) from None
    return check_schema(data, where=where)


def compile_template(
    data: Mapping[str, Any], *, source: str, schema: Mapping[str, Any] | None = None
) -> Template:
    """A template from its parsed TOML (``source`` names it in messages); see
    `load_template`."""
    env = _environment()
    params: dict[str, Any] = {}
    if "model" in data:
        model = data["model"]
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f'{source}: model must be a model id such as "claude-sonnet-4-5"')
        params["model"] = model
    if "max_tokens" not in data:
        raise ConfigError(f"{source}: max_tokens is missing; add max_tokens = 1024 (for example)")
    max_tokens = data["max_tokens"]
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigError(f"{source}: max_tokens must be a positive integer, not {max_tokens!r}")
    params["max_tokens"] = max_tokens
    for key, value in data.items():
        if key in TEMPLATE_KEYS:
            continue
        if key in _RESERVED_PARAMS:
            raise ConfigError(f"{source}: {key} cannot be set in a template (batchrun sets it)")
        params[key] = value

    messages = _messages(data, source, env)
    system = _compiled(env, data, "system", source)
    custom_id = _compiled(env, data, "id", source)
    hash_long_ids = data.get("hash_long_ids", False)
    if not isinstance(hash_long_ids, bool):
        raise ConfigError(f"{source}: hash_long_ids must be true or false")
    output: dict[str, Any] | None = None
    if schema is not None:
        output = check_schema(schema, where="the schema")
    elif "output" in data:
        output = check_schema(data["output"], where=f"{source}: [output]")
    if output is not None:
        _check_no_clash(params, source)
    repair = data.get("repair")
    if repair is not None and (
        isinstance(repair, bool) or not isinstance(repair, int) or repair < 0
    ):
        raise ConfigError(
            f"{source}: repair must be a whole number of repair sends, 0 or more, not {repair!r}"
        )
    return Template(
        source=source,
        params=params,
        system=system,
        messages=tuple((role, tmpl) for role, tmpl, _ in messages),
        custom_id=custom_id,
        hash_long_ids=hash_long_ids,
        output=output,
        repair=repair,
        message_names=tuple(name for _, _, name in messages),
    )


def _check_no_clash(params: Mapping[str, Any], source: str) -> None:
    """With ``[output]``, batchrun writes how the answer is asked for (``output_config.format``
    or the forced ``answer`` tool): a template that sets either itself would be overridden
    silently, so it is refused."""
    config = params.get("output_config")
    if isinstance(config, Mapping) and "format" in config:
        raise ConfigError(
            f"{source}: output_config.format and [output] both give the answer's format; keep "
            "[output] (batchrun writes output_config.format from it)"
        )
    if "tool_choice" in params:
        raise ConfigError(
            f"{source}: tool_choice cannot be set with [output]: on endpoints that take "
            "structured answers as a tool call, batchrun forces its own tool"
        )
    tools = params.get("tools")
    if isinstance(tools, list) and any(
        isinstance(tool, Mapping) and tool.get("name") == ANSWER_TOOL_NAME for tool in tools
    ):
        raise ConfigError(
            f"{source}: a tool named {ANSWER_TOOL_NAME!r} clashes with the tool batchrun adds "
            "for [output]; rename it"
        )


class _Sandbox(SandboxedEnvironment):
    """Jinja's sandbox, with the two operators that can make a huge value from a short
    template bounded: ``'x' * 10**10`` would otherwise take the machine's memory before the
    rendered request could be refused for its size."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if (
                    isinstance(sequence, str | list | tuple)
                    and isinstance(times, int)
                    and len(sequence) * times > MAX_RENDERED_CHARS
                ):
                    raise SecurityError(
                        f"'*' would make {len(sequence) * times:,} items, over the "
                        f"{MAX_RENDERED_CHARS:,} a template may make"
                    )
        elif (
            operator == "**"
            and isinstance(left, int)
            and isinstance(right, int)
            and abs(left) > 1
            and right * abs(left).bit_length() > MAX_POWER_BITS
        ):
            raise SecurityError(f"'{left} ** {right}' is too large a number")
        return super().call_binop(context, operator, left, right)


def _environment() -> SandboxedEnvironment:
    return _Sandbox(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=lambda value: "" if value is None else value,
    )


def _compiled(
    env: SandboxedEnvironment, data: Mapping[str, Any], key: str, source: str
) -> jinja2.Template | None:
    if key not in data:
        return None
    return _compile(env, data[key], key, source)


def _compile(env: SandboxedEnvironment, text: object, name: str, source: str) -> jinja2.Template:
    if not isinstance(text, str):
        raise ConfigError(f"{source}: {name} must be a string (a template), not {text!r}")
    try:
        return env.from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(
            f"{source}: {name}: template syntax error on its line {exc.lineno}: {exc.message}"
        ) from None


def _messages(
    data: Mapping[str, Any], source: str, env: SandboxedEnvironment
) -> list[tuple[str, Content, str]]:
    if ("user" in data) == ("messages" in data):
        raise ConfigError(
            f'{source}: give the prompt as user = "..." or as messages = [{{role = '
            '"user", content = "..."}]' + (", not both" if "user" in data else "")
        )
    if "user" in data:
        return [("user", _compile(env, data["user"], "user", source), "user")]
    messages = data["messages"]
    if not isinstance(messages, list) or not messages:
        raise ConfigError(f"{source}: messages must be a list of {{role, content}} tables")
    compiled: list[tuple[str, Content, str]] = []
    for index, message in enumerate(messages):
        name = f"messages[{index}]"
        if not isinstance(message, Mapping) or set(message) != {"role", "content"}:
            raise ConfigError(f"{source}: {name} must be a table with role and content only")
        if message["role"] not in MESSAGE_ROLES:
            raise ConfigError(
                f"{source}: {name}.role must be one of {', '.join(sorted(MESSAGE_ROLES))}"
            )
        compiled.append(
            (message["role"], _content(env, message["content"], f"{name}.content", source), name)
        )
    return compiled


def _content(env: SandboxedEnvironment, content: object, name: str, source: str) -> Content:
    """A message's content: a template string, or a list of text and image parts."""
    if not isinstance(content, list):
        return _compile(env, content, name, source)
    if not content:
        raise ConfigError(f"{source}: {name} is an empty list; give a string or parts")
    parts: list[TextPart | ImagePart] = []
    for index, part in enumerate(content):
        where = f"{name}[{index}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if not isinstance(part, Mapping) or kind not in ("text", "image"):
            raise ConfigError(
                f'{source}: {where} must be {{type = "text", text = "..."}} or {{type = '
                '"image", column = "COLUMN"}} (or source = "a path or URL template")'
            )
        if kind == "text":
            if set(part) != {"type", "text"}:
                raise ConfigError(f"{source}: {where} must have type and text only")
            parts.append(TextPart(_compile(env, part["text"], f"{where}.text", source)))
            continue
        if set(part) not in ({"type", "column"}, {"type", "source"}):
            raise ConfigError(
                f'{source}: {where} must have type and either column = "COLUMN" (a column '
                'holding a path or URL) or source = "TEMPLATE" (rendering to one)'
            )
        column = part.get("column")
        if "column" in part and (not isinstance(column, str) or not column):
            raise ConfigError(f"{source}: {where}.column must be a column's name")
        image_source = (
            _compile(env, part["source"], f"{where}.source", source) if "source" in part else None
        )
        parts.append(ImagePart(column, image_source))
    return tuple(parts)


def render(
    template: Template,
    row: dict[str, Any],
    row_no: int,
    *,
    mode: StructuredMode | None,
    base_dir: str = ".",
) -> Rendered | tuple[str, ...]:
    """The request for ``row`` (number ``row_no``), asking for ``template.output`` the
    ``mode`` way; or the row's problems (sentences without ``file:row N:``). Image parts'
    relative paths start at ``base_dir`` (the table's folder)."""
    context = {**{str(key): value for key, value in row.items()}, "row": row, "row_number": row_no}
    problems: list[str] = []

    def text_of(part: jinja2.Template, name: str) -> str | None:
        try:
            # Piece by piece, so a loop that renders without end is stopped at the cap
            # instead of filling memory.
            pieces: list[str] = []
            size = 0
            for piece in part.generate(context):
                size += len(piece)
                if size > MAX_RENDERED_CHARS:
                    problems.append(
                        f"the {name} template renders more than {MAX_RENDERED_CHARS:,} "
                        "characters; a request line may hold at most "
                        f"{MAX_LINE_BYTES // MIB} MiB"
                    )
                    return None
                pieces.append(piece)
            return "".join(pieces)
        except jinja2.UndefinedError as exc:
            problems.append(_undefined_problem(exc, name, row))
        except SecurityError as exc:
            problems.append(
                f"the {name} template is refused by the sandbox ({exc}); use the row's values "
                "and Jinja's filters only"
            )
        except Exception as exc:
            problems.append(f"the {name} template failed: {type(exc).__name__}: {exc}")
        return None

    params = dict(template.params)
    if template.system is not None:
        system = text_of(template.system, "system")
        if system is not None:
            params["system"] = system

    def image_of(part: ImagePart, name: str) -> dict[str, Any] | None:
        if part.column is not None:
            if part.column not in row:
                problems.append(
                    f"the {name} image uses column {show(part.column)}, which is not a column "
                    f"of this row; its columns are {columns_text(row)}"
                )
                return None
            value: object = row[part.column]
            what = f"column {show(part.column)}"
        else:
            assert part.source is not None
            value = text_of(part.source, f"{name}.source")
            if value is None:
                return None
            what = f"the {name}.source image"
        block = image_block(value, base_dir=base_dir, what=what)
        if isinstance(block, str):
            problems.append(block)
            return None
        return block

    def content_of(content: Content, name: str) -> str | list[dict[str, Any]] | None:
        if not isinstance(content, tuple):
            return text_of(content, f"{name}.content" if name.startswith("messages") else name)
        blocks: list[dict[str, Any]] = []
        for index, part in enumerate(content):
            where = f"{name}.content[{index}]"
            if isinstance(part, TextPart):
                text = text_of(part.text, f"{where}.text")
                if text is not None:
                    blocks.append({"type": "text", "text": text})
            else:
                image = image_of(part, where)
                if image is not None:
                    blocks.append(image)
        return blocks

    messages = []
    for (role, content), name in zip(template.messages, template.message_names, strict=True):
        messages.append({"role": role, "content": content_of(content, name)})
    params["messages"] = messages
    custom_id = str(row_no)
    if template.custom_id is not None:
        rendered_id = text_of(template.custom_id, "id")
        if rendered_id is not None:
            custom_id = _custom_id(rendered_id, template.hash_long_ids, problems)
    if problems:
        return tuple(problems)
    if template.output is not None and mode is not None:
        params = ask_for(params, template.output, mode)
    return Rendered(custom_id, params)


def _undefined_problem(exc: jinja2.UndefinedError, name: str, row: dict[str, Any]) -> str:
    match = _UNDEFINED_NAME.match(exc.message or "")
    if match is not None:
        return (
            f"the {name} template uses {show(match.group(1))}, which is not a column of this "
            f"row; its columns are {columns_text(row)}"
        )
    return f"the {name} template uses something undefined: {exc.message}"


def _custom_id(rendered: str, hash_long_ids: bool, problems: list[str]) -> str:
    if custom_id_fits(rendered):
        return rendered
    if hash_long_ids and rendered:
        return hashed_custom_id(rendered)
    problems.append(
        f"the id template gave {show(rendered)}, which is not a custom_id (1-"
        f"{CUSTOM_ID_MAX_CHARS} letters, digits, '_' and '-'); change the id template or set "
        "hash_long_ids = true in the template"
    )
    return rendered


def hashed_custom_id(rendered: str) -> str:
    """A valid custom_id standing for ``rendered``: its letters, digits, ``_`` and ``-`` (runs
    of other characters as one ``-``, cut to fit), ``-``, and the first `HASH_HEX_CHARS` hex
    digits of its SHA-256. The same text always gives the same id."""
    digest = hashlib.sha256(rendered.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_HEX_CHARS]
    readable = _NOT_ID_CHARS.sub("-", rendered).strip("-")
    readable = readable[: CUSTOM_ID_MAX_CHARS - HASH_HEX_CHARS - 1].rstrip("-")
    return f"{readable}-{digest}" if readable else digest
