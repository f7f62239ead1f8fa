"""Images from a column, the whole way: a CSV whose `photo` column holds relative paths (to
the table's folder, not the working directory) and URLs is submitted, stored with the image
blocks, run against the simulator on a socket and answered; a row whose file is missing or
not an image refuses the table by row, nothing stored; `estimate` counts the images."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from typer.testing import CliRunner

from batchrun.simulator import SimulatorConfig, running_simulator
from batchrun.store.store import Store
from tests.cli.test_cli_tables import cli, simulator_config, stored_requests
from tests.clitools import invoke, stored_batches
from tests.input.test_image_parts import GIF, png

__all__ = ["cli"]  # the fixture, shared with the submit tests

TEMPLATE = """\
model = "claude-sonnet-4-5"
max_tokens = 50
id = "item-{{ sku }}"
[[messages]]
role = "user"
content = [
  {type = "text", text = "What is in this picture of {{ name }}?"},
  {type = "image", column = "photo"},
]
"""


def catalogue(tmp_path: Path, photos: list[str]) -> Path:
    folder = tmp_path / "catalogue"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "a.png").write_bytes(png(200, 200))
    (folder / "img" / "b.gif").write_bytes(GIF)
    (folder / "img" / "notes.png").write_text("hello")
    table = folder / "items.csv"
    table.write_text(
        "sku,name,photo\n"
        + "".join(f"{n},item {n},{photo}\n" for n, photo in enumerate(photos, start=1))
    )
    (tmp_path / "items.toml").write_text(TEMPLATE)
    return table


def test_paths_and_urls_become_image_blocks_that_the_simulator_answers(
    cli: CliRunner, tmp_path: Path, store: Store
) -> None:
    table = catalogue(tmp_path, ["img/a.png", "https://example.com/c.jpg", "img/b.gif"])
    # The working directory is tmp_path (the fixture), not the table's folder.
    with running_simulator(SimulatorConfig(seed=3)) as url:
        config = simulator_config(tmp_path, url, "native")
        submitted = invoke(
            cli,
            "submit",
            str(table),
            "--template",
            str(tmp_path / "items.toml"),
            "--endpoint",
            "sim",
            BATCHRUN_CONFIG=str(config),
        )
        assert submitted.exit_code == 0, submitted.output
        batch_id = submitted.stdout.strip()
        ran = invoke(cli, "run", batch_id, BATCHRUN_CONFIG=str(config))
        results = invoke(cli, "results", batch_id, BATCHRUN_CONFIG=str(config))

    assert ran.exit_code == 0, ran.output
    sent = [r["params"]["messages"][0]["content"][1] for r in stored_requests(store, batch_id)]
    assert sent == [
        {
            "type": "image",
            "source": {
                "type": "base64",
                "media_type": "image/png",
                "data": base64.b64encode(png(200, 200)).decode(),
            },
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/c.jpg"}},
        {
            "type": "image",
            "source": {
                "type": "base64",
                "media_type": "image/gif",
                "data": base64.b64encode(GIF).decode(),
            },
        },
    ]
    answered = [json.loads(line) for line in results.stdout.splitlines()]
    assert [line["result"]["type"] for line in answered] == ["succeeded"] * 3


def test_a_missing_or_non_image_file_refuses_the_table_by_row(
    cli: CliRunner, tmp_path: Path
) -> None:
    table = catalogue(tmp_path, ["img/a.png", "img/gone.png", "img/notes.png"])

    result = invoke(
        cli,
        "submit",
        str(table),
        "--template",
        str(tmp_path / "items.toml"),
        "--endpoint",
        "simulator",
    )

    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    folder = repr(str(table.parent))
    assert (
        f"{table}:row 2: column 'photo': no image file 'img/gone.png' (in {folder}); check "
        "the path (a relative path starts at the table's folder)" in result.stderr
    )
    assert (
        f"{table}:row 3: column 'photo': 'img/notes.png' (in {folder}) is not a JPEG, PNG, GIF "
        "or WebP image" in result.stderr
    )
    assert stored_batches(cli) == []


def test_estimate_counts_each_images_patches(cli: CliRunner, tmp_path: Path) -> None:
    table = catalogue(tmp_path, ["img/a.png", "img/a.png"])
    template = str(tmp_path / "items.toml")
    with_images = invoke(
        cli, "estimate", str(table), "--template", template, "--endpoint", "simulator", "--json"
    )
    (tmp_path / "text.toml").write_text(TEMPLATE.replace('{type = "image", column = "photo"},', ""))
    without = invoke(
        cli,
        "estimate",
        str(table),
        "--template",
        str(tmp_path / "text.toml"),
        "--endpoint",
        "simulator",
        "--json",
    )

    assert with_images.exit_code == 0 and without.exit_code == 0, with_images.output
    # A 200x200 image is 8x8 patches of 28 px: 64 tokens each.
    extra = (
        json.loads(with_images.stdout)["input_tokens"] - json.loads(without.stdout)["input_tokens"]
    )
    assert extra == 2 * 64
