"""``batchrun lanes``: a batch's provider batches (the batch lane), and settling one whose
create the evidence could not settle (ambiguous)."""

from __future__ import annotations

from typing import Annotated

import typer

from batchrun.cli.batch_ids import batch_argument
from batchrun.cli.consoles import print_json, stderr, stdout


def lanes(
    ctx: typer.Context,
    batch_id: Annotated[str, batch_argument()],
    adopt: Annotated[
        str | None,
        typer.Option(
            help="ROW=PROVIDER_ID: the provider batch PROVIDER_ID holds the requests of "
            "record ROW (an ambiguous or unsettled create); its results are imported by "
            "the next run.",
            show_default=False,
        ),
    ] = None,
    not_created: Annotated[
        int | None,
        typer.Option(
            "--not-created",
            help="ROW: the create of record ROW did not happen; its requests go back to the "
            "batch lane and are sent again by the next run. Say so only when you have "
            "checked the provider's console: if it did happen, they are paid twice.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the records as JSON.")] = False,
) -> None:
    """The batch's provider batches (batch lane): each record's state, the provider's batch
    id and status, and why one is ambiguous; or settle an ambiguous one.

    A create whose answer was lost is checked against the provider's list of batches; when
    several could be it (or the provider has no list), batchrun refuses to guess and holds
    its requests until you say which it was.

    Examples:

        batchrun lanes "$B"
        batchrun lanes "$B" --adopt 3=msgbatch_01ABC
        batchrun lanes "$B" --not-created 3
    """
    from batchrun.cli.context import client_of

    client = client_of(ctx)
    if adopt is not None or not_created is not None:
        if adopt is not None and not_created is not None:
            raise typer.BadParameter("give --adopt or --not-created, not both")
        if adopt is not None:
            row_text, sep, provider_id = adopt.partition("=")
            if not sep or not row_text.strip().isdigit() or not provider_id.strip():
                raise typer.BadParameter(
                    f"{adopt!r} is not ROW=PROVIDER_ID (e.g. 3=msgbatch_01ABC)",
                    param_hint="--adopt",
                )
            said = client.settle_provider_batch(
                batch_id, int(row_text), provider_id=provider_id.strip()
            )
        else:
            assert not_created is not None
            said = client.settle_provider_batch(batch_id, not_created, provider_id=None)
        stderr.print(f"{batch_id}: {said}", markup=False)
        return
    rows = client.provider_batches(batch_id)
    if as_json:
        print_json([row.model_dump(mode="json") for row in rows])
        return
    if not rows:
        stdout.print(f"{batch_id} has no provider batches", markup=False)
        return
    for row in rows:
        status = f", provider says {row.provider_status}" if row.provider_status else ""
        line = (
            f"{row.id}  {row.provider_id or '-'}  {row.endpoint}  {row.request_count:,} "
            f"requests  {row.state}{status}"
        )
        stdout.print(line + (f"\n    {row.note}" if row.note else ""), markup=False)


def add_commands(app: typer.Typer) -> None:
    """Register ``lanes``."""
    app.command()(lanes)
