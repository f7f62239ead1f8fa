// A small SVG line chart of per-minute values: one step line per series (each minute is a
// flat segment at its value), rate limits as dashed horizontal lines (the binding one
// heavier), axes with labels, and a hover read-out. Only numbers and fixed names go into
// attributes; labels are set as text.
import { el, fmtCompact, fmtInt, svg } from "./common.js";

const HEIGHT = 250;
const MARGIN = { left: 52, right: 14, top: 16, bottom: 26 };
const MINUTE_MS = 60000;
// A limit more than this many times the highest value is listed, not drawn: it would flatten
// the lines to the bottom of the chart.
const OFF_SCALE_FACTOR = 5;
const TICK_MINUTES = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440];

function niceStep(max, count) {
  const raw = max / count;
  const magnitude = Math.pow(10, Math.floor(Math.log10(raw)));
  const norm = raw / magnitude;
  const nice = norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10;
  return nice * magnitude;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// points: [{t: ms, values: {key: number}, end: ms or null}], oldest first, one per minute
// (end: where a minute still filling stops, now). series: [{key, label, cls}]; limits:
// [{value, label, cls, binding}]; width: of the box it is drawn in, so that text keeps its
// size.
export function lineChart({ points, series, limits, partialLast, label, width }) {
  const WIDTH = Math.max(Math.round(width), 320);
  const root = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "chart", role: "img", "aria-label": label });
  const legend = el("div", { cls: "legend" });
  for (const item of series) {
    legend.append(el("span", { cls: "legend-item" }, [el("span", { cls: `swatch ${item.cls}` }), el("span", { text: item.label })]));
  }
  if (!points.length) {
    root.append(svg("text", { x: WIDTH / 2, y: HEIGHT / 2, class: "chart-empty", "text-anchor": "middle" }, "No answers yet"));
    addLimitLegend(legend, limits, () => true);
    return { chart: root, legend };
  }

  const plotW = WIDTH - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const t0 = points[0].t;
  const t1 = points[points.length - 1].t + MINUTE_MS;
  let dataMax = 0;
  for (const point of points) for (const item of series) dataMax = Math.max(dataMax, point.values[item.key] || 0);
  const drawn = limits.filter((limit) => dataMax === 0 || limit.value <= dataMax * OFF_SCALE_FACTOR);
  const top = Math.max(dataMax, ...drawn.map((limit) => limit.value), 1);
  const step = niceStep(top * 1.08, 4);
  const yMax = Math.ceil((top * 1.08) / step) * step;
  const x = (t) => MARGIN.left + ((t - t0) / (t1 - t0)) * plotW;
  const y = (v) => MARGIN.top + plotH - (v / yMax) * plotH;

  // Grid and the value axis.
  const grid = svg("g", { class: "grid" });
  for (let value = 0; value <= yMax + step / 2; value += step) {
    grid.append(svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y(value), y2: y(value) }));
    grid.append(svg("text", { x: MARGIN.left - 6, y: y(value) + 4, "text-anchor": "end", class: "axis-label" }, fmtCompact(value)));
  }
  root.append(grid);

  // The time axis: ticks at whole multiples of a step of local time.
  const spanMinutes = (t1 - t0) / MINUTE_MS;
  const tickMinutes = TICK_MINUTES.find((m) => spanMinutes / m <= 7) || 1440;
  const tickMs = tickMinutes * MINUTE_MS;
  const offset = new Date(t0).getTimezoneOffset() * MINUTE_MS;
  const axis = svg("g", { class: "axis" });
  axis.append(svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y(0), y2: y(0) }));
  for (let t = Math.ceil((t0 - offset) / tickMs) * tickMs + offset; t <= t1; t += tickMs) {
    axis.append(svg("line", { x1: x(t), x2: x(t), y1: y(0), y2: y(0) + 4 }));
    axis.append(svg("text", { x: x(t), y: HEIGHT - 8, "text-anchor": "middle", class: "axis-label" }, clock(t)));
  }
  root.append(axis);

  if (partialLast) {
    const last = points[points.length - 1].t;
    root.append(svg("rect", { x: x(last), y: MARGIN.top, width: x(last + MINUTE_MS) - x(last), height: plotH, class: "partial-zone" }));
    root.append(svg("text", { x: x(last + MINUTE_MS) - 3, y: MARGIN.top + 11, "text-anchor": "end", class: "partial-label" }, "this minute, so far"));
  }

  // Limits under the lines, labelled at their right end; labels of limits close together
  // are stacked upwards instead of drawn over each other.
  let labelY = Infinity;
  for (const limit of [...drawn].sort((a, b) => a.value - b.value)) {
    const cls = `limit ${limit.cls}${limit.binding ? " limit-binding" : ""}`;
    const group = svg("g", { class: cls, "data-limit": limit.dimension });
    group.append(svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y(limit.value), y2: y(limit.value) }));
    labelY = Math.min(y(limit.value) - 4, labelY - 13);
    group.append(svg("text", { x: WIDTH - MARGIN.right - 4, y: labelY, "text-anchor": "end", class: "limit-label" }, limit.label));
    root.append(group);
  }
  addLimitLegend(legend, limits, (limit) => drawn.includes(limit));

  for (const item of series) {
    const coords = [];
    for (const point of points) {
      const value = y(point.values[item.key] || 0);
      const end = point.end || point.t + MINUTE_MS;
      coords.push(`${x(point.t).toFixed(1)},${value.toFixed(1)}`, `${x(end).toFixed(1)},${value.toFixed(1)}`);
    }
    const line = svg("polyline", { points: coords.join(" "), class: `series ${item.cls}`, "data-series": item.key, "data-count": points.length });
    line.append(svg("title", {}, item.label));
    root.append(line);
  }

  addReadout(root, points, series, { x, t0, t1, plotW, plotH, WIDTH });
  return { chart: root, legend };
}

function addLimitLegend(legend, limits, isDrawn) {
  for (const limit of limits) {
    const text = limit.label + (isDrawn(limit) ? "" : " (above the chart)");
    legend.append(
      el("span", { cls: "legend-item" + (limit.binding ? " legend-binding" : "") }, [
        el("span", { cls: `swatch swatch-dashed ${limit.cls}` }),
        el("span", { text }),
      ]),
    );
  }
}

// A vertical guide and the values of the minute under the pointer.
function addReadout(root, points, series, { x, t0, t1, plotW, plotH, WIDTH }) {
  const guide = svg("line", { class: "guide", y1: MARGIN.top, y2: MARGIN.top + plotH, visibility: "hidden" });
  const box = svg("g", { class: "readout", visibility: "hidden" });
  const background = svg("rect", { rx: 4, height: 18 + 15 * series.length, width: 150 });
  const lines = [svg("text", { x: 8, y: 15, class: "readout-title" })];
  series.forEach((item, index) => lines.push(svg("text", { x: 8, y: 31 + 15 * index })));
  box.append(background, ...lines);
  const overlay = svg("rect", { x: MARGIN.left, y: MARGIN.top, width: plotW, height: plotH, class: "overlay" });
  overlay.addEventListener("mousemove", (event) => {
    const bounds = root.getBoundingClientRect();
    const px = ((event.clientX - bounds.left) / bounds.width) * WIDTH;
    const t = t0 + ((px - MARGIN.left) / plotW) * (t1 - t0);
    const index = Math.min(points.length - 1, Math.max(0, Math.floor((t - t0) / MINUTE_MS)));
    const point = points[index];
    guide.setAttribute("x1", x(point.t + MINUTE_MS / 2));
    guide.setAttribute("x2", x(point.t + MINUTE_MS / 2));
    lines[0].textContent = new Date(point.t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    series.forEach((item, i) => {
      lines[i + 1].textContent = `${item.label}: ${fmtInt(point.values[item.key] || 0)}${point.end ? " (rate so far)" : ""}`;
    });
    const left = Math.min(px + 10, WIDTH - 160);
    box.setAttribute("transform", `translate(${left.toFixed(1)},${MARGIN.top + 4})`);
    guide.setAttribute("visibility", "visible");
    box.setAttribute("visibility", "visible");
  });
  overlay.addEventListener("mouseleave", () => {
    guide.setAttribute("visibility", "hidden");
    box.setAttribute("visibility", "hidden");
  });
  root.append(guide, overlay, box);
}
