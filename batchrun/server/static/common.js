// What both dashboard pages share: building elements (text only: every value from the
// server is set as textContent, never parsed as markup), number and time formats, and the
// refresh loop.

export const REFRESH_MS = 2000;

// An element with a class, text and attributes; children appended in order.
export function el(tag, options = {}, children = []) {
  const node = document.createElement(tag);
  if (options.cls) node.className = options.cls;
  if (options.text !== undefined && options.text !== null) node.textContent = String(options.text);
  if (options.title) node.title = String(options.title);
  for (const [name, value] of Object.entries(options.attrs || {})) {
    node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

// An SVG element with attributes (numbers and fixed names only) and optional text.
export function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });

export function fmtInt(value) {
  return value === null || value === undefined ? "–" : integer.format(value);
}

// 1.2K, 3.4M: for axes and rates.
export function fmtCompact(value) {
  if (value === null || value === undefined) return "–";
  return Math.abs(value) < 1000 ? trimmed(value) : compact.format(value);
}

function trimmed(value) {
  if (Number.isInteger(value)) return String(value);
  return value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2);
}

export function fmtUsd(value) {
  if (value === null || value === undefined) return "unknown";
  if (value === 0) return "$0.00";
  if (value >= 1) return "$" + value.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  return "$" + value.toPrecision(3);
}

export function fmtPercent(share) {
  if (share === null || share === undefined) return "–";
  return (share * 100).toFixed(share < 0.1 ? 1 : 0) + "%";
}

export function fmtTime(iso) {
  if (!iso) return "–";
  return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

export function fmtDateTime(iso) {
  if (!iso) return "–";
  const when = new Date(iso);
  const today = new Date().toDateString() === when.toDateString();
  const time = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return today ? time : when.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + time;
}

export function fmtAgo(iso, nowIso) {
  if (!iso) return "–";
  const seconds = Math.max(0, (Date.parse(nowIso) - Date.parse(iso)) / 1000);
  if (seconds < 60) return Math.round(seconds) + " s ago";
  if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
  if (seconds < 86400) return (seconds / 3600).toFixed(1).replace(/\.0$/, "") + " h ago";
  return Math.round(seconds / 86400) + " d ago";
}

// What a dimension of a limit counts, per minute, for labels.
export const DIMENSION_UNITS = {
  requests: "requests/min",
  input_tokens: "input tokens/min",
  output_tokens: "output tokens/min",
  tokens: "tokens/min",
};

const STATE_LABELS = {
  running: "running",
  waiting: "waiting",
  paused: "paused",
  canceling: "canceling",
  canceled: "canceled",
  ended: "ended",
};

export function stateBadge(state) {
  return el("span", { cls: "badge badge-" + (STATE_LABELS[state] ? state : "unknown"), text: STATE_LABELS[state] || state });
}

// A stacked bar of the batch's requests (succeeded, errored, canceled or expired, still
// processing), a progressbar to assistive technology: done of total.
export function progressBar(batch, large = false) {
  const counts = batch.request_counts;
  const total = Math.max(batch.total, 1);
  const bar = el("div", {
    cls: large ? "progress progress-large" : "progress",
    attrs: {
      role: "progressbar",
      "aria-valuemin": 0,
      "aria-valuemax": batch.total,
      "aria-valuenow": batch.done,
      "aria-label": `${batch.done} of ${batch.total} requests finished`,
    },
  });
  const parts = [
    ["succeeded", counts.succeeded],
    ["errored", counts.errored],
    ["other", counts.canceled + counts.expired],
  ];
  for (const [kind, count] of parts) {
    if (count <= 0) continue;
    const part = el("span", { cls: "progress-part progress-" + kind });
    // Set through the CSSOM: allowed by the page's style-src 'self' (no inline styles).
    part.style.width = (100 * count) / total + "%";
    bar.append(part);
  }
  return bar;
}

export function progressLabel(batch) {
  const share = batch.total ? batch.done / batch.total : 0;
  return `${fmtInt(batch.done)} / ${fmtInt(batch.total)} · ${fmtPercent(share)}`;
}

// "120 req/min" and how much of the binding limit that is.
export function throughputCell(batch) {
  const cell = el("div", { cls: "throughput" });
  const rates = batch.throughput;
  if (!rates) {
    cell.append(el("span", { cls: "muted", text: batch.processing_status === "ended" ? "–" : "no answers yet" }));
    return cell;
  }
  const tokens = rates.input_tokens_per_min + rates.output_tokens_per_min;
  cell.append(
    el("div", { cls: "rate", text: `${fmtCompact(rates.requests_per_min)} req/min` }),
    el("div", { cls: "muted small", text: `${fmtCompact(tokens)} tok/min${rates.window === "average" ? " (average)" : ""}` }),
  );
  const binding = batch.binding;
  if (binding) {
    const share = binding.utilisation || 0;
    const meter = el("div", { cls: "meter" + (share >= 0.9 ? " meter-hot" : ""), attrs: { "aria-hidden": "true" } });
    const fill = el("span");
    fill.style.width = Math.min(share, 1) * 100 + "%";
    meter.append(fill);
    cell.append(
      meter,
      el("div", {
        cls: "small",
        text: `${fmtPercent(share)} of ${binding.dimension} ${fmtCompact(binding.limit)}`,
        title: `binding limit: ${binding.dimension}, ${fmtInt(binding.limit)} ${DIMENSION_UNITS[binding.measures]}`,
      }),
    );
  } else {
    cell.append(el("div", { cls: "muted small", text: "no rate limit set" }));
  }
  return cell;
}

export function errorChips(types, max = 3) {
  const box = el("div", { cls: "chips" });
  if (!types.length) {
    box.append(el("span", { cls: "muted", text: "none" }));
    return box;
  }
  for (const item of types.slice(0, max)) {
    box.append(el("span", { cls: "chip chip-error", text: `${item.type} ×${fmtInt(item.count)}` }));
  }
  if (types.length > max) box.append(el("span", { cls: "muted small", text: `+${types.length - max} more` }));
  return box;
}

// The name of a batch (or its id when it has none), as text.
export function batchTitle(batch) {
  return batch.name && batch.name.trim() ? batch.name : batch.id;
}

// The header's status line and sign-out button.
export function showStatus(text, ok) {
  const node = document.getElementById("status");
  node.textContent = text;
  node.classList.toggle("status-error", !ok);
}

export function showSignOut(authRequired) {
  document.getElementById("logout").hidden = !authRequired;
}

// Fetch JSON; a lost session sends the browser to the login form.
export async function fetchJson(url) {
  const response = await fetch(url, { headers: { accept: "application/json" }, cache: "no-store" });
  if (response.status === 401) {
    window.location.assign("/");
    throw new Error("signed out");
  }
  const body = await response.json().catch(() => null);
  return { status: response.status, body };
}

// Run load() now and every REFRESH_MS after it finished (not while the tab is hidden).
export function refreshForever(load) {
  let timer = null;
  let loading = false;
  async function tick() {
    timer = null;
    loading = true;
    try {
      await load();
    } catch (error) {
      showStatus("Cannot reach the server; retrying…", false);
    } finally {
      loading = false;
    }
    if (!document.hidden) timer = setTimeout(tick, REFRESH_MS);
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer === null && !loading) tick();
  });
  tick();
}
