"""Prompt templates: what a template file may hold, how a row is rendered (sandboxed,
strict), and the custom_ids it gives (table-driven, no I/O but the template file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batchrun.errors import ConfigError
from batchrun.input.templates import (
    Rendered,
    compile_template,
    hashed_custom_id,
    load_template,
    render,
)
from batchrun.input.validation import custom_id_fits

BASE: dict[str, Any] = {"model": "m", "max_tokens": 10}


def rendered(data: dict[str, Any], row: dict[str, Any], row_no: int = 1) -> Any:
    return render(compile_template({**BASE, **data}, source="t.toml"), row, row_no, mode=None)


def test_messages_each_column_row_and_row_number_are_rendered() -> None:
    template = {
        "system": "{{ row['the lang'] }}",
        "messages": [
            {"role": "user", "content": "Q{{ row_number }}: {{ q }}"},
            {
                "role": "assistant",
                "content": "{% if hint is none %}-{% else %}{{ hint }}{% endif %}",
            },
        ],
        "stop_sequences": ["END"],
    }

    result = rendered(template, {"q": "why?", "hint": None, "the lang": "fr"}, 7)

    assert result == Rendered(
        "7",
        {
            "model": "m",
            "max_tokens": 10,
            "stop_sequences": ["END"],
            "system": "fr",
            "messages": [
                {"role": "user", "content": "Q7: why?"},
                {"role": "assistant", "content": "-"},
            ],
        },
    )


def test_a_null_cell_renders_empty_and_values_keep_their_json_with_tojson() -> None:
    result = rendered({"user": "[{{ a }}] {{ b | tojson }}"}, {"a": None, "b": {"k": [1]}})

    assert result.params["messages"][0]["content"] == '[] {"k": [1]}'


@pytest.mark.parametrize(
    ("user", "problem"),
    [
        (
            "{{ nope }}",
            "the user template uses 'nope', which is not a column of this row; its "
            "columns are 'a', 'b c'",
        ),
        (
            "{{ a.missing }}",
            "the user template uses something undefined: 'str object' has no attribute 'missing'",
        ),
        (
            "{{ a.__class__.__mro__ }}",
            "the user template is refused by the sandbox (access "
            "to attribute '__class__' of 'str' object is unsafe.); use the row's values",
        ),
        ("{{ 1 / 0 }}", "the user template failed: ZeroDivisionError: division by zero"),
        ("{{ ''.format.__globals__ }}", "the user template is refused by the sandbox"),
    ],
)
def test_what_cannot_be_rendered_is_a_row_problem(user: str, problem: str) -> None:
    result = rendered({"user": user}, {"a": "x", "b c": "y"})

    assert isinstance(result, tuple)
    (got,) = result
    assert got.startswith(problem), got


def test_every_part_that_fails_is_listed() -> None:
    result = rendered({"system": "{{ s }}", "user": "{{ u }}", "id": "{{ i }}"}, {"a": 1})

    assert isinstance(result, tuple)
    assert [p.split(" template")[0] for p in result] == ["the system", "the user", "the id"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model": "m", "user": "x"}, "t.toml: max_tokens is missing"),
        ({**BASE, "max_tokens": 0, "user": "x"}, "max_tokens must be a positive integer"),
        ({**BASE, "max_tokens": True, "user": "x"}, "max_tokens must be a positive integer"),
        ({**BASE, "model": "", "user": "x"}, "model must be a model id"),
        (BASE, 'give the prompt as user = "..." or as messages'),
        ({**BASE, "user": "x", "messages": []}, ", not both"),
        (
            {**BASE, "messages": [{"role": "system", "content": "x"}]},
            "messages[0].role must be one of assistant, user",
        ),
        (
            {**BASE, "messages": [{"role": "user"}]},
            "messages[0] must be a table with role and content only",
        ),
        ({**BASE, "user": "{{ a "}, "t.toml: user: template syntax error on its line 1:"),
        ({**BASE, "user": 3}, "user must be a string (a template)"),
        ({**BASE, "user": "x", "stream": True}, "stream cannot be set in a template"),
        ({**BASE, "user": "x", "hash_long_ids": "yes"}, "hash_long_ids must be true or false"),
        (
            {**BASE, "user": "x", "output": {"type": "object"}, "output_config": {"format": {}}},
            "output_config.format and [output] both give the answer's format",
        ),
        (
            {**BASE, "user": "x", "output": {"type": "object"}, "tool_choice": {"type": "any"}},
            "tool_choice cannot be set with [output]",
        ),
        (
            {
                **BASE,
                "user": "x",
                "output": {"type": "object"},
                "tools": [{"name": "answer", "input_schema": {"type": "object"}}],
            },
            "a tool named 'answer' clashes with the tool batchrun adds",
        ),
    ],
)
def test_a_template_that_cannot_work_is_refused_naming_the_key(
    data: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        compile_template(data, source="t.toml")

    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'user = "x"\nmax_tokens = ', "is not valid TOML"),
        (b'user = "caf\xe9"', "is not UTF-8 text"),
    ],
)
def test_a_template_file_that_is_not_toml_is_refused(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "t.toml"
    path.write_bytes(content)

    with pytest.raises(ConfigError, match=message):
        load_template(path)
    with pytest.raises(ConfigError, match="no such template file"):
        load_template(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    "text",
    ["a b", "x" * 65, "https://example.com/a?b=c", "ünïcode", "--", "a" * 200 + "/b"],
)
def test_a_hashed_id_fits_is_stable_and_keeps_what_it_can(text: str) -> None:
    hashed = hashed_custom_id(text)

    assert custom_id_fits(hashed)
    assert hashed == hashed_custom_id(text)
    assert hashed != hashed_custom_id(text + "!")


def test_ids_that_fit_are_kept_and_others_hashed_only_when_asked() -> None:
    keep = rendered({"user": "x", "id": "{{ a }}", "hash_long_ids": True}, {"a": "ok-1"})
    hashed = rendered({"user": "x", "id": "{{ a }}", "hash_long_ids": True}, {"a": "not ok"})
    refused = rendered({"user": "x", "id": "{{ a }}"}, {"a": ""})

    assert keep.custom_id == "ok-1"
    assert hashed.custom_id.startswith("not-ok-") and len(hashed.custom_id) == 23
    assert refused == (
        "the id template gave '', which is not a custom_id (1-64 letters, digits, '_' and '-'); "
        "change the id template or set hash_long_ids = true in the template",
    )
