// One batch (GET /batches/{id}): summary cards, requests and tokens per minute against the
// rate limits, the limits, and the latest errors; redrawn every refresh.
import { lineChart } from "./chart.js";
import {
  DIMENSION_UNITS,
  batchTitle,
  el,
  errorChips,
  fetchJson,
  fmtCompact,
  fmtDateTime,
  fmtInt,
  fmtPercent,
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

// As the server measures throughput: over 10 s at least (the first answers are no rate yet).
const MIN_SPAN_S = 10;

const batchId = decodeURIComponent(window.location.pathname.split("/").pop());

const SERIES_CLASS = {
  requests: "s-requests",
  errored: "s-errored",
  input_tokens: "s-input",
  output_tokens: "s-output",
  tokens: "s-tokens",
};

function card(title, children) {
  return el("section", { cls: "card" }, [el("h3", { text: title }), ...children]);
}

function pair(label, value, title) {
  return el("div", { cls: "pair" }, [el("span", { cls: "muted", text: label }), el("span", { text: value, title })]);
}

function drawHead(batch) {
  document.title = `${batchTitle(batch)} · batchrun`;
  document.getElementById("batch-title").textContent = batchTitle(batch);
  const meta = document.getElementById("batch-meta");
  const parts = [
    stateBadge(batch.state),
    batch.name ? el("span", { cls: "mono", text: batch.id }) : null,
    el("span", { text: "endpoint " + batch.endpoint }),
    batch.lane !== "realtime" ? el("span", { text: "lane " + batch.lane }) : null,
  ];
  meta.replaceChildren(...parts.filter((part) => part !== null));
  const paused = document.getElementById("paused");
  paused.hidden = !batch.paused_reason;
  paused.textContent = batch.paused_reason ? "Paused: " + batch.paused_reason : "";
}

function drawCards(body) {
  const batch = body.batch;
  const counts = batch.request_counts;
  const usage = batch.usage;
  document.getElementById("cards").replaceChildren(
    card("Progress", [
      progressBar(batch, true),
      el("div", { cls: "big", text: progressLabel(batch) }),
      el("div", { cls: "counts" }, [
        el("span", { cls: "count count-ok", text: fmtInt(counts.succeeded) + " succeeded" }),
        el("span", { cls: "count count-error", text: fmtInt(counts.errored) + " errored" }),
        el("span", { cls: "count count-other", text: fmtInt(counts.canceled + counts.expired) + " canceled/expired" }),
        el("span", { cls: "count count-open", text: fmtInt(counts.processing) + " processing" }),
      ]),
    ]),
    card("Throughput", [throughputCell(batch)]),
    card("Cost", [
      el("div", { cls: "big", text: fmtUsd(batch.cost_usd) }),
      batch.cost_usd === null ? el("div", { cls: "small muted", text: `${fmtUsd(batch.cost_usd_known)} known; no price for ${batch.unpriced_models.join(", ")}` }) : null,
      pair("input tokens", fmtInt(usage.input_tokens)),
      pair("output tokens", fmtInt(usage.output_tokens)),
      pair("cache writes / reads", `${fmtCompact(usage.cache_creation_input_tokens)} / ${fmtCompact(usage.cache_read_input_tokens)}`),
    ]),
    card("Timing", [
      pair("created", fmtDateTime(batch.created_at), batch.created_at),
      pair("first answer", fmtDateTime(batch.first_answer_at), batch.first_answer_at || ""),
      pair("last answer", fmtDateTime(batch.last_answer_at), batch.last_answer_at || ""),
      batch.ended_at ? pair("ended", fmtDateTime(batch.ended_at), batch.ended_at) : pair("expires", fmtDateTime(batch.expires_at), batch.expires_at),
      pair("models", body.models.join(", ") || "–"),
    ]),
  );
}

function limitLabel(limit) {
  const source =
    limit.learned !== null ? "learned"
    : limit.flag !== null && limit.flag === limit.limit ? "flag"
    : limit.configured === limit.limit ? "configured"
    : "announced";
  return `${limit.dimension} ${fmtCompact(limit.limit)} (${source})${limit.binding ? " · binding" : ""}`;
}

function chartLimits(limits, measures) {
  return limits
    .filter((limit) => measures.includes(limit.measures))
    .map((limit) => ({
      dimension: limit.dimension,
      value: limit.limit,
      label: limitLabel(limit),
      cls: SERIES_CLASS[limit.measures],
      binding: limit.binding,
    }));
}

function drawCharts(body) {
  const partialLast = body.series.partial_last;
  const now = Date.parse(body.now);
  const firstAnswer = body.batch.first_answer_at ? Date.parse(body.batch.first_answer_at) : 0;
  const points = body.series.points.map((point, index, all) => {
    const t = Date.parse(point.t);
    // The minute still filling is drawn at the rate of its answers so far (since the
    // minute began, or since the first answer if that came later), up to now.
    const partial = partialLast && index === all.length - 1;
    const since = Math.max(t, firstAnswer);
    const scale = partial ? 60 / Math.min(Math.max((now - since) / 1000, MIN_SPAN_S), 60) : 1;
    const values = {};
    for (const key of ["requests", "errored", "input_tokens", "output_tokens"]) values[key] = point[key] * scale;
    values.tokens = values.input_tokens + values.output_tokens;
    return { t, values, end: partial ? Math.max(now, t + 1000) : null };
  });
  const width = document.getElementById("chart-requests").clientWidth || 760;
  const requests = lineChart({
    label: "Requests per minute",
    width,
    points,
    partialLast,
    series: [
      { key: "requests", label: "answers", cls: SERIES_CLASS.requests },
      { key: "errored", label: "errored", cls: SERIES_CLASS.errored },
    ],
    limits: chartLimits(body.limits, ["requests"]),
  });
  const tokenSeries = [
    { key: "input_tokens", label: "input tokens", cls: SERIES_CLASS.input_tokens },
    { key: "output_tokens", label: "output tokens", cls: SERIES_CLASS.output_tokens },
  ];
  if (body.limits.some((limit) => limit.measures === "tokens")) {
    tokenSeries.push({ key: "tokens", label: "input + output", cls: SERIES_CLASS.tokens });
  }
  const tokens = lineChart({
    label: "Tokens per minute",
    width,
    points,
    partialLast,
    series: tokenSeries,
    limits: chartLimits(body.limits, ["input_tokens", "output_tokens", "tokens"]),
  });
  document.getElementById("chart-requests").replaceChildren(requests.chart, requests.legend);
  document.getElementById("chart-tokens").replaceChildren(tokens.chart, tokens.legend);
}

// Whose limits these are: those the latest run that sent the batch recorded, or (none
// recorded: not sent yet, or sent by an older batchrun) those of its keys now.
function limitsSource(body) {
  const run = body.batch.limits_run;
  const binding = " The binding limit is the one the batch uses the largest share of.";
  if (!run) {
    return "Per minute, for the endpoint and models this batch is sent with, as known now (no run has recorded limits for it: nothing of it was sent in real time yet, it went only to provider batches, or it was sent before batchrun recorded limits), shared with anything else sent there." + binding;
  }
  const which = body.runs.length > 1 ? `the latest of ${body.runs.length} runs` : "the run";
  return `Per minute, as ${which} that sent this batch (started ${fmtTime(run.started_at)}) recorded them: a flag given to the run replaces the configured limit; in force is the workers' rate now.` + binding;
}

function drawLimits(body) {
  const limits = body.limits;
  document.getElementById("limits-source").textContent = limitsSource(body);
  document.getElementById("no-limits").textContent = body.batch.limits_recorded
    ? "No rate limit was known to the run that sent this batch: none was configured or given as a flag, and no answer announced one."
    : "No rate limit is configured or known for this endpoint and these models.";
  const rows = limits.map((limit) =>
    el("tr", { cls: limit.binding ? "binding" : "", attrs: { "data-dimension": limit.dimension } }, [
      el("td", {}, [el("strong", { text: limit.dimension }), limit.binding ? el("span", { cls: "badge badge-binding", text: "binding" }) : null]),
      el("td", { cls: "muted", text: DIMENSION_UNITS[limit.measures] }),
      el("td", { cls: "num", text: fmtInt(limit.flag) }),
      el("td", { cls: "num", text: fmtInt(limit.configured) }),
      el("td", { cls: "num", text: fmtInt(limit.announced) }),
      el("td", { cls: "num", text: fmtInt(limit.learned) }),
      el("td", { cls: "num", text: fmtInt(limit.in_force) }),
      el("td", { cls: "num", text: fmtInt(limit.rate) }),
      el("td", { cls: "num", text: fmtPercent(limit.utilisation) }),
    ]),
  );
  document.getElementById("limit-rows").replaceChildren(...rows);
  document.getElementById("no-limits").hidden = limits.length > 0;
  document.getElementById("limits-table").hidden = limits.length === 0;
}

function drawErrors(body) {
  const types = body.batch.error_types;
  document.getElementById("error-types").replaceChildren(...(types.length ? [errorChips(types, 12)] : []));
  const rows = body.latest_errors.map((error) =>
    el("tr", {}, [
      el("td", { cls: "small", text: fmtTime(error.at), title: error.at }),
      el("td", { cls: "mono small", text: error.custom_id }),
      el("td", {}, [el("span", { cls: "chip chip-error", text: error.type })]),
      el("td", { cls: "num", text: error.http_status === null ? "–" : String(error.http_status) }),
      el("td", { cls: "message", text: error.message || "" }),
    ]),
  );
  document.getElementById("error-rows").replaceChildren(...rows);
  document.getElementById("errors-table").hidden = rows.length === 0;
  document.getElementById("no-errors").hidden = rows.length > 0;
  const retrying = body.retrying.map((item) =>
    el("tr", {}, [
      el("td", { cls: "mono small", text: item.custom_id }),
      el("td", { cls: "num", text: fmtInt(item.attempts) }),
      el("td", { cls: "message", text: item.message || "" }),
    ]),
  );
  document.getElementById("retry-rows").replaceChildren(...retrying);
  document.getElementById("retrying").hidden = retrying.length === 0;
}

async function load() {
  const { status, body } = await fetchJson("/dashboard/api/batches/" + encodeURIComponent(batchId));
  if (status === 404) {
    document.getElementById("batch-title").textContent = "No such batch";
    document.getElementById("content").hidden = true;
    document.getElementById("not-found").hidden = false;
    showStatus("Updated " + fmtTime(new Date().toISOString()), true);
    return;
  }
  if (status !== 200 || !body) {
    showStatus(`The server answered ${status}; retrying…`, false);
    return;
  }
  showSignOut(body.auth_required);
  document.getElementById("not-found").hidden = true;
  document.getElementById("content").hidden = false;
  drawHead(body.batch);
  drawCards(body);
  drawCharts(body);
  drawLimits(body);
  drawErrors(body);
  showStatus("Updated " + fmtTime(body.now), true);
}

refreshForever(load);
