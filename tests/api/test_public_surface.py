"""The typed public surface: every type Client takes, returns or raises is importable from
``batchrun`` and listed in ``__all__``, public methods have full signatures, and ``import
batchrun`` loads none of it."""

from __future__ import annotations

import inspect
import subprocess
import sys
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import batchrun
import batchrun.client
import batchrun.errors
from tests.conftest import request_line


def _public_methods() -> list[str]:
    return [
        name
        for name, member in vars(batchrun.Client).items()
        if callable(member) and (not name.startswith("_") or name in ("__init__", "__enter__"))
    ]


def _batchrun_objects(annotation: object) -> Iterator[object]:
    """The classes and aliases of batchrun's own that an annotation names, however nested."""
    if isinstance(annotation, type):
        if annotation.__module__.startswith("batchrun"):
            yield annotation
        return
    if isinstance(annotation, list | tuple):  # Callable's parameter list
        for item in annotation:
            yield from _batchrun_objects(item)
        return
    for arg in typing.get_args(annotation):
        yield from _batchrun_objects(arg)


def test_every_name_in_all_resolves_and_star_import_gives_them() -> None:
    imported: dict[str, object] = {}
    exec("from batchrun import *", imported)

    for name in batchrun.__all__:
        assert imported[name] is getattr(batchrun, name), name
    assert set(batchrun.__all__) <= set(dir(batchrun))


def test_every_type_in_clients_public_signatures_is_exported() -> None:
    exported = {id(getattr(batchrun, name)) for name in batchrun.__all__}
    namespace = vars(batchrun.client) | {name: getattr(batchrun, name) for name in batchrun.__all__}
    missing = set()
    for method in _public_methods():
        hints = typing.get_type_hints(getattr(batchrun.Client, method), globalns=namespace)
        for annotation in hints.values():
            for found in _batchrun_objects(annotation):
                if id(found) not in exported:
                    missing.add(f"{method}: {found!r}")
    assert not missing, sorted(missing)


def test_the_aliases_of_clients_signatures_are_exported_as_written() -> None:
    # So a caller annotates with them: limits: batchrun.Limits = {"rpm": 600}.
    assert batchrun.Limits == Mapping[str, float | None]
    assert typing.get_args(batchrun.ResultState) == ("succeeded", "errored", "canceled", "expired")
    assert typing.get_args(batchrun.LockMode) == ("exclusive", "wait", "share")
    assert set(typing.get_args(batchrun.RunEvent)) == {
        batchrun.Note,
        batchrun.Progress,
        batchrun.PassFinished,
    }


def test_the_errors_client_raises_are_exported() -> None:
    classes = [
        value
        for value in vars(batchrun.errors).values()
        if isinstance(value, type) and issubclass(value, batchrun.BatchrunError)
    ]
    assert {cls.__name__ for cls in classes} <= set(batchrun.__all__)


def test_public_methods_take_no_catch_all_keyword_arguments() -> None:
    catch_all = [
        method
        for method in _public_methods()
        if any(
            parameter.kind is inspect.Parameter.VAR_KEYWORD
            for parameter in inspect.signature(getattr(batchrun.Client, method)).parameters.values()
        )
    ]

    assert catch_all == []


@pytest.mark.parametrize(
    ("blocking", "awaiting"),
    [("run", "arun"), ("resume", "aresume"), ("submit", "asubmit"), ("export", "aexport")],
)
def test_each_async_twin_takes_what_its_blocking_method_takes(blocking: str, awaiting: str) -> None:
    def shape(name: str) -> list[tuple[str, object, object]]:
        parameters = inspect.signature(getattr(batchrun.Client, name)).parameters.values()
        return [
            # Only the default of stop_on_signals differs: a host loop keeps its signals.
            (p.name, p.kind, None if p.name == "stop_on_signals" else p.default)
            for p in parameters
        ]

    assert shape(blocking) == shape(awaiting)


def test_resume_takes_every_option_of_run_but_forever() -> None:
    def keywords(name: str) -> dict[str, object]:
        parameters = inspect.signature(getattr(batchrun.Client, name)).parameters.values()
        return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}

    run, resume = keywords("run"), keywords("resume")
    assert {k: v for k, v in run.items() if k != "forever"} == {
        k: v for k, v in resume.items() if k not in ("retry_errored", "expires_in_s")
    }


def test_a_misspelt_run_option_is_a_type_error_at_the_call(tmp_path: Path) -> None:
    client = batchrun.Client(f"sqlite:///{tmp_path / 'x.db'}", env={"HOME": str(tmp_path)})

    with pytest.raises(TypeError, match="rpm"):
        client.run(rpm=5)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="max_cost"):
        client.resume("msgbatch_x", max_cost=5)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="nmae"):
        client.submit([request_line("a")], nmae="x")  # type: ignore[call-arg]
    # Nothing was opened or stored: the call never started.
    assert not (tmp_path / "x.db").exists()


def test_limits_are_a_mapping_by_dimension(db_url: str, tmp_path: Path) -> None:
    with batchrun.Client(db_url, env={"HOME": str(tmp_path)}, cwd=tmp_path) as client:
        batch = client.submit([request_line("a"), request_line("b")], endpoint="simulator")

        with pytest.raises(batchrun.ConfigError, match="unknown rate limit 'rpmm'"):
            client.run(batch.id, limits={"rpmm": 600}, stop_on_signals=False)
        result = client.run(batch.id, limits={"rpm": 6000, "tpm": None}, stop_on_signals=False)

    assert result.exit_code == batchrun.ExitCode.OK
    assert isinstance(result, batchrun.RunResult)


def test_import_batchrun_loads_neither_the_client_nor_the_types() -> None:
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, batchrun; "
            "print(sorted(m for m in sys.modules if m.startswith('batchrun')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    assert eval(loaded) == ["batchrun", "batchrun.errors"]
