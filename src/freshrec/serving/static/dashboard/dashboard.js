// The live dashboard: one snapshot, then an update a second over server-sent events
// (/dashboard/stream); polls /dashboard/status where EventSource is missing or keeps failing.
// Text from the server is always set as textContent, never as HTML.
"use strict";

const KEEP_SERVER = 600; // samples kept on the page (ten minutes at one a second)
const KEEP_TRAINER = 600; // trainer points kept (one per gate decision)
const state = { server: [], trainer: [] };
const charts = {};

const colours = ["#2957d9", "#e8590c", "#2b8a3e", "#862e9c", "#c92a2a"];

function number(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function when(seconds) {
  if (!seconds) return "–";
  return new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19);
}

function makeChart(id, series, axes) {
  const element = document.getElementById(id);
  const options = {
    width: Math.max(element.clientWidth, 300),
    height: 220,
    scales: { x: { time: true } },
    series: [{}].concat(series.map((s, i) => Object.assign({ stroke: colours[i % colours.length], width: 1.5, spanGaps: true }, s))),
    axes: axes || [{}, {}],
    legend: { live: true },
  };
  const empty = [[]].concat(series.map(() => []));
  charts[id] = new uPlot(options, empty, element);
}

function setChart(id, data) {
  const chart = charts[id];
  chart.setData(data);
  document.getElementById(id).dataset.points = String(data[0].length);
}

function column(rows, key) {
  return rows.map((row) => (row[key] === undefined ? null : row[key]));
}

function buildCharts() {
  makeChart("chart-hr", [{ label: "HR@10 running" }, { label: "HR@10 of the window" }]);
  makeChart("chart-rate", [{ label: "in (server)" }, { label: "learned (trainer)" }]);
  makeChart(
    "chart-freshness",
    [{ label: "version age (s)", scale: "s" }, { label: "versions behind", scale: "n" }],
    [{}, { scale: "s" }, { scale: "n", side: 1, grid: { show: false } }],
  );
  makeChart("chart-latency", [
    { label: "recommend p50" },
    { label: "recommend p95" },
    { label: "recommend p99" },
    { label: "events p99" },
  ]);
  makeChart("chart-ids", [{ label: "admitted" }, { label: "expired" }, { label: "evicted" }]);
}

function drawCharts() {
  const server = state.server;
  const trainer = state.trainer.filter((p) => p.event_time);
  const byEventTime = trainer.slice().sort((a, b) => a.event_time - b.event_time);
  setChart("chart-hr", [column(byEventTime, "event_time"), column(byEventTime, "hr"), column(byEventTime, "window_hr")]);
  const serverRate = [column(server, "time"), column(server, "events_in_per_second")];
  const trainerRate = [column(trainer, "wall_time"), column(trainer, "events_per_second")];
  setChart("chart-rate", joinSeries(serverRate, trainerRate));
  setChart("chart-freshness", [column(server, "time"), column(server, "version_age_seconds"), column(server, "versions_behind")]);
  setChart("chart-latency", [
    column(server, "time"),
    column(server, "recommend_p50_ms"),
    column(server, "recommend_p95_ms"),
    column(server, "recommend_p99_ms"),
    column(server, "events_p99_ms"),
  ]);
  setChart("chart-ids", [column(trainer, "wall_time"), column(trainer, "admitted"), column(trainer, "expired"), column(trainer, "evicted")]);
}

// Two series on their own time axes, as one table for uPlot (null where a series has no point).
function joinSeries(a, b) {
  const times = Array.from(new Set(a[0].concat(b[0]))).sort((x, y) => x - y);
  const at = (series) => {
    const values = new Map(series[0].map((t, i) => [t, series[1][i]]));
    return times.map((t) => (values.has(t) ? values.get(t) : null));
  };
  return [times, at(a), at(b)];
}

function fillTable(id, rows, cells) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(
    ...rows.map((row) => {
      const tr = document.createElement("tr");
      for (const cell of cells(row)) {
        const td = document.createElement("td");
        const [text, className] = Array.isArray(cell) ? cell : [cell, ""];
        td.textContent = text === null || text === undefined ? "–" : String(text);
        if (className) td.className = className;
        tr.appendChild(td);
      }
      return tr;
    }),
  );
}

function drawTables(doc) {
  const versions = (doc.versions || []).slice().reverse();
  fillTable("table-versions", versions, (v) => [
    v.version,
    v.kind,
    when(v.created),
    number(v.events_trained),
    number(v.hr, 4),
    v.gate_reason,
    v.rollback ? `from ${v.rollback.from}: ${v.rollback.reason || ""}` : "",
  ]);
  const gate = doc.gate || {};
  document.getElementById("gate-counts").textContent =
    gate.published === undefined
      ? "no decision yet"
      : `${number(gate.published)} published, ${number(gate.held)} held, ${number(gate.quarantined)} quarantined, ` +
        `${number(gate.rollbacks)} automatic rollbacks`;
  const decisions = (gate.decisions || []).slice().reverse();
  fillTable("table-decisions", decisions, (d) => [
    when(d.decided_at),
    d.published ? ["published", "published"] : ["held", "held"],
    d.reason,
    number(d.candidate_hr, 4),
    number(d.serving_hr, 4),
    number(d.window_events),
    d.version,
  ]);
  const history = (doc.history || []).slice().reverse();
  fillTable("table-rollbacks", history, (h) => [when(h.time), h.action || "rollback", h.from, h.to, h.reason]);
  const tables = Object.entries((doc.trainer || {}).tables || {});
  fillTable("table-sizes", tables, ([name, t]) => [
    name,
    number(t.live_rows),
    number(t.capacity),
    number(t.admitted),
    number(t.evicted),
    number(t.expired),
  ]);
  const rejections = Object.entries((doc.server || {}).rejections || {});
  fillTable("table-rejections", rejections, ([reason, count]) => [reason, number(count)]);
}

function drawTiles(doc) {
  const server = doc.server || {};
  const trainer = doc.trainer || {};
  const last = state.server[state.server.length - 1] || {};
  const lastTrainer = state.trainer[state.trainer.length - 1] || {};
  const set = (id, text) => (document.getElementById(id).textContent = text);
  set("tile-version", server.ready ? `${server.serving} of ${server.current}` : "none yet");
  set("tile-hr", number(trainer.hr, 4));
  set("tile-trained", number(trainer.events_trained));
  set("tile-in", number(last.events_in_per_second));
  set("tile-learned", number(lastTrainer.events_per_second));
  set("tile-speed", number(trainer.learning_events_per_second));
  set("tile-age", last.version_age_seconds === null || last.version_age_seconds === undefined ? "–" : `${number(last.version_age_seconds, 1)} s`);
  set("tile-items", number(server.catalogue_items));
}

function render(doc) {
  drawCharts();
  drawTables(doc);
  drawTiles(doc);
}

// The trainer's series comes in columns ({event_time: [...], hr: [...], ...}): one object per point here.
function rowsOf(columns) {
  const names = Object.keys(columns || {});
  const length = names.length ? Math.min(...names.map((name) => columns[name].length)) : 0;
  return Array.from({ length }, (_, i) => Object.fromEntries(names.map((name) => [name, columns[name][i]])));
}

function take(doc, replace) {
  const server = (doc.server && doc.server.series) || [];
  const trainer = rowsOf(doc.trainer && doc.trainer.series);
  state.server = (replace ? server : state.server.concat(server)).slice(-KEEP_SERVER);
  state.trainer = (replace ? trainer : state.trainer.concat(trainer)).slice(-KEEP_TRAINER);
  render(doc);
}

function connection(text, className) {
  const element = document.getElementById("connection");
  element.textContent = text;
  element.className = `connection ${className || ""}`;
}

function poll() {
  connection("polling", "polling");
  fetch("/dashboard/status", { credentials: "same-origin" })
    .then((answer) => {
      if (answer.status === 401) window.location.reload(); // the sign-in form
      return answer.json();
    })
    .then((doc) => take(doc, true))
    .catch(() => connection("server unreachable"))
    .finally(() => setTimeout(poll, 2000));
}

function stream() {
  if (!window.EventSource) {
    poll();
    return;
  }
  const source = new EventSource("/dashboard/stream");
  let failures = 0;
  source.addEventListener("snapshot", (message) => {
    failures = 0;
    connection("live", "live");
    take(JSON.parse(message.data), true);
  });
  source.addEventListener("update", (message) => take(JSON.parse(message.data), false));
  source.onerror = () => {
    failures += 1;
    connection("reconnecting…");
    // EventSource retries on its own; a closed one (a refused request) or repeated failures fall back.
    if (source.readyState === EventSource.CLOSED || failures > 3) {
      source.close();
      poll();
    }
  };
}

window.addEventListener("resize", () => {
  for (const [id, chart] of Object.entries(charts)) {
    chart.setSize({ width: Math.max(document.getElementById(id).clientWidth, 300), height: 220 });
  }
});

buildCharts();
stream();
