// The batch list (GET /): tiles with totals, then one row per batch, redrawn every refresh.
import {
  batchTitle,
  el,
  errorChips,
  fetchJson,
  fmtAgo,
  fmtCompact,
  fmtInt,
  fmtTime,
  fmtUsd,
  progressBar,
  progressLabel,
  refreshForever,
  showSignOut,
  showStatus,
  stateBadge,
  throughputCell,
} from "./common.js";

const LIMIT = 50;

function tile(label, value, note) {
  return el("div", { cls: "tile" }, [
    el("div", { cls: "tile-label", text: label }),
    el("div", { cls: "tile-value", text: value }),
    note ? el("div", { cls: "tile-note", text: note }) : null,
  ]);
}

function drawTiles(batches) {
  const open = batches.filter((batch) => batch.processing_status !== "ended");
  const processing = batches.reduce((sum, batch) => sum + batch.request_counts.processing, 0);
  const errored = batches.reduce((sum, batch) => sum + batch.request_counts.errored, 0);
  const cost = batches.reduce((sum, batch) => sum + batch.cost_usd_known, 0);
  const unknown = batches.some((batch) => batch.cost_usd === null);
  const rate = open.reduce((sum, batch) => sum + (batch.throughput ? batch.throughput.requests_per_min : 0), 0);
  document.getElementById("tiles").replaceChildren(
    tile("Batches in progress", fmtInt(open.length), `of ${fmtInt(batches.length)} shown`),
    tile("Requests processing", fmtInt(processing)),
    tile("Answers per minute", fmtCompact(rate), "batches in progress, last minute"),
    tile("Errored requests", fmtInt(errored)),
    tile("Cost", fmtUsd(cost), unknown ? "some models have no price" : "batches shown"),
  );
}

function row(batch, now) {
  const link = el("a", { cls: batch.name ? "batch-link" : "batch-link mono", text: batchTitle(batch), attrs: { href: "/batches/" + encodeURIComponent(batch.id) } });
  const who = el("td", { cls: "batch-cell" }, [
    link,
    el("div", { cls: "mono small muted", text: batch.name ? batch.id : batch.endpoint }),
    batch.name ? el("div", { cls: "small muted", text: batch.endpoint }) : null,
  ]);
  const state = el("td", {}, [
    stateBadge(batch.state),
    batch.paused_reason ? el("div", { cls: "small muted clip", text: batch.paused_reason, title: batch.paused_reason }) : null,
  ]);
  const progress = el("td", { cls: "progress-cell" }, [progressBar(batch), el("div", { cls: "small", text: progressLabel(batch) })]);
  const counts = batch.request_counts;
  const countCell = el("td", {}, [
    el("div", { cls: "counts" }, [
      el("span", { cls: "count count-ok", text: fmtInt(counts.succeeded), title: "succeeded" }),
      el("span", { cls: "count count-error", text: fmtInt(counts.errored), title: "errored" }),
      el("span", { cls: "count count-other", text: fmtInt(counts.canceled + counts.expired), title: "canceled or expired" }),
      el("span", { cls: "count count-open", text: fmtInt(counts.processing), title: "processing" }),
    ]),
  ]);
  const cost = el("td", { cls: "num" }, [
    el("div", { text: fmtUsd(batch.cost_usd === null ? null : batch.cost_usd) }),
    batch.cost_usd === null ? el("div", { cls: "small muted", text: `≥ ${fmtUsd(batch.cost_usd_known)}`, title: "unpriced: " + batch.unpriced_models.join(", ") }) : null,
  ]);
  const created = el("td", { cls: "small" }, [
    el("div", { text: fmtAgo(batch.created_at, now), title: batch.created_at }),
    batch.ended_at ? el("div", { cls: "muted", text: "ended " + fmtTime(batch.ended_at) }) : null,
  ]);
  return el("tr", { attrs: { "data-batch-id": batch.id, "data-state": batch.state } }, [
    who,
    state,
    progress,
    countCell,
    cost,
    el("td", {}, [throughputCell(batch)]),
    el("td", {}, [errorChips(batch.error_types)]),
    created,
  ]);
}

async function load() {
  const { status, body } = await fetchJson(`/dashboard/api/batches?limit=${LIMIT}`);
  if (status !== 200 || !body) {
    showStatus(`The server answered ${status}; retrying…`, false);
    return;
  }
  showSignOut(body.auth_required);
  drawTiles(body.batches);
  document.getElementById("batch-rows").replaceChildren(...body.batches.map((batch) => row(batch, body.now)));
  document.getElementById("empty").hidden = body.batches.length > 0;
  document.getElementById("more").hidden = !body.has_more;
  showStatus("Updated " + fmtTime(body.now), true);
}

refreshForever(load);
