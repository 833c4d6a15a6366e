// The operator dashboard: one stream on /ops/stream (the JS kit's reconnecting reader),
// each snapshot redraws the page.
// Everything is drawn here from the stream's data (sparklines as SVG paths); text goes in
// through textContent only, so error messages from tasks cannot inject markup.
// An open feed (no JOBCAST_OPS_TOKEN) says `redacted: true` and carries a short label in
// place of each job id: an id would let anyone watch, cancel and download the job.

import { stream } from "./jobcast.js";

const $ = (id) => document.getElementById(id);
// Where Jobcast's routes start ("" at the root, "/jobcast" embedded): the page says.
const BASE = document.body.dataset.base ?? "";
const SILENT_MS = 5000; // no snapshot for this long: the monitor is not publishing

let lastAt = 0;
let lastSeen = 0;

function connect() {
  // The kit's reader reconnects by itself (retry: 3000); it gives up on a refusal (e.g. 401).
  stream(`${BASE}/ops/stream`, {
    onOpen: () => feed("live", "Live"),
    onReconnecting: () => feed("reconnecting", "Reconnecting…"),
    onEnd: () => true, // the feed never ends: a closed response is a drop
    onError: () => feed("down", "Disconnected — reload to retry"),
    onEvent: (kind, data) => kind === "snapshot" && show(JSON.parse(data)),
  });
  setInterval(() => {
    if (lastSeen && Date.now() - lastSeen > SILENT_MS && $("feed").dataset.state === "live") {
      feed("stale", "Monitor silent");
    }
  }, 1000);
}

function show(snap) {
  if (snap.at < lastAt) return; // an older snapshot than the one shown (connect race)
  lastAt = snap.at;
  lastSeen = Date.now();
  feed("live", "Live");
  render(snap);
}

function feed(state, text) {
  $("feed").dataset.state = state;
  $("feed-text").textContent = text;
}

function render(snap) {
  const time = new Date(snap.at).toLocaleTimeString();
  $("updated").textContent = `Updated ${time} · monitor ${snap.by.split(":")[0]}`;
  renderStats(snap);
  sparkline($("spark-queue"), snap.hist.q);
  sparkline($("spark-done"), snap.hist.done);
  $("spark-queue-now").textContent = last(snap.hist.q);
  $("spark-done-now").textContent = `${last(snap.hist.done)}/s`;
  renderWorkers(snap);
  renderKinds(snap.kinds || []);
  renderFailures(snap.failures, snap.redacted);
  $("ids-note").hidden = !snap.redacted;
}

function renderStats(snap) {
  const online = snap.workers.filter((w) => w.up).length;
  $("workers-online").textContent = online;
  $("workers-known").textContent = snap.workers.length > online ? ` / ${snap.workers.length}` : "";
  const q = snap.queue;
  $("queue-depth").textContent = Math.max(q.waiting, q.broker);
  // With several lines (one per Celery queue): those that hold anything, waiting/running.
  const all = Object.entries(q.lines || {});
  const lines = all.length < 2 ? [] : all
    .filter(([, n]) => n.waiting + n.running + n.broker > 0)
    .map(([name, n]) => `${name} ${n.waiting}/${n.running}`);
  $("queue-detail").textContent =
    `${q.running} running · ${q.broker} in broker` + (lines.length ? ` · ${lines.join(" · ")}` : "");
  $("rate-1").textContent = fmt(snap.rate.m1);
  $("rate-detail").textContent = `5 m ${fmt(snap.rate.m5)} · 15 m ${fmt(snap.rate.m15)}`;
  $("runtime-p50").textContent = snap.runtime.p50 == null ? "–" : seconds(snap.runtime.p50);
  $("runtime-p95").textContent =
    snap.runtime.p95 == null ? "p50 · p95 —" : `p50 · p95 ${seconds(snap.runtime.p95)}`;
  const rate = snap.failRate;
  $("fail-rate").textContent = rate == null ? "–" : percent(rate);
  $("fail-rate").classList.toggle("bad", rate != null && rate > 0.05);
}

function sparkline(svg, values) {
  const w = 300, h = 60, pad = 3;
  const n = Math.max(60, values.length); // right-aligned: a young history fills from the right
  const max = Math.max(1, ...values);
  const x = (i) => (w * i) / (n - 1);
  const y = (v) => h - pad - ((h - 2 * pad) * v) / max;
  const points = values.map((v, i) => `${x(i + n - values.length).toFixed(1)},${y(v).toFixed(1)}`);
  if (points.length === 1) points.unshift(`0,${y(values[0]).toFixed(1)}`);
  const line = points.length ? `M${points.join("L")}` : "";
  svg.querySelector(".line").setAttribute("d", line);
  const start = points.length ? points[0].split(",")[0] : 0;
  svg.querySelector(".area").setAttribute("d", line ? `${line}L${w},${h}L${start},${h}Z` : "");
  svg.dataset.max = max;
}

function renderWorkers(snap) {
  const body = $("workers").tBodies[0];
  const rows = snap.workers.map((w) => workerRow(w, snap.at, snap.redacted));
  body.replaceChildren(...rows);
  $("workers-empty").hidden = rows.length > 0;
}

function workerRow(w, at, redacted) {
  const tr = el("tr", { className: w.up ? "up" : "down" });
  tr.dataset.worker = w.name;
  const badge = el("span", { className: `badge ${w.up ? "online" : "offline"}`, textContent: w.up ? "online" : "offline" });
  tr.append(
    cell(badge, "status"),
    cell(el("span", { className: "host", textContent: w.name, title: w.name })),
    cell(jobs(w, redacted), "job-col"),
    cell(w.processed, "num", "Processed"),
    cell(w.failed, `num${w.failed ? " bad" : ""}`, "Failed"),
    cell(w.load.length ? w.load.map((x) => x.toFixed(2)).join(" ") : "–", "num wide", "Load"),
    cell(ago(at - w.seen), "num muted", "Heartbeat"),
  );
  return tr;
}

function jobs(w, redacted) {
  if (!w.up) return el("span", { className: "muted", textContent: "—" });
  if (!w.jobs.length) return el("span", { className: "muted", textContent: "idle" });
  const box = el("div", { className: "jobs" });
  for (const job of w.jobs) {
    const pct = job.pct ?? 0;
    const row = el("div", { className: "job", title: `${job.task} ${idText(job.id, redacted)}` });
    const bar = el("div", { className: "bar" });
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuenow", pct);
    bar.setAttribute("aria-valuemin", 0);
    bar.setAttribute("aria-valuemax", 100);
    const fill = el("span");
    fill.style.width = `${pct}%`;
    bar.append(fill);
    row.append(
      el("code", { textContent: job.id.slice(0, 8) }),
      bar,
      el("span", { className: "pct", textContent: job.pct == null ? "…" : `${pct} %` }),
    );
    box.append(row);
  }
  return box;
}

// One row per job kind (the monitor reads them from Redis: tasks/kindstats.py). A kind
// name is a task's text: it goes in as text only.
function renderKinds(kinds) {
  const rows = kinds.map((k) => {
    const tr = el("tr");
    tr.dataset.kind = k.kind;
    const bad = k.failRate != null && k.failRate > 0.05;
    tr.append(
      cell(el("span", { className: "host", textContent: k.kind, title: k.kind }), "kind"),
      cell(k.waiting, "num", "Waiting"),
      cell(fmt(k.rate), "num", "Per min"),
      cell(k.p50 == null ? "–" : seconds(k.p50), "num", "p50"),
      cell(k.p95 == null ? "–" : seconds(k.p95), "num", "p95"),
      cell(k.failRate == null ? "–" : percent(k.failRate), `num fail${bad ? " bad" : ""}`, "Failed"),
      cell(k.done, "num", "In all"),
    );
    return tr;
  });
  $("kinds").tBodies[0].replaceChildren(...rows);
  $("kinds-empty").hidden = rows.length > 0;
}

function renderFailures(failures, redacted) {
  const items = failures.map((f) => {
    const li = el("li");
    const head = el("div", { className: "head" });
    head.append(
      el("time", { textContent: new Date(f.at).toLocaleTimeString(), dateTime: new Date(f.at).toISOString() }),
      el("strong", { textContent: f.task }),
      el("code", { textContent: f.id, className: "id", title: idText(f.id, redacted) }),
      el("span", { className: "muted", textContent: f.worker ? `on ${f.worker}` : "" }),
    );
    li.append(head, el("pre", { className: "error", textContent: f.error }));
    return li;
  });
  $("failures").replaceChildren(...items);
  $("failures-empty").hidden = items.length > 0;
}

function idText(id, redacted) {
  return redacted ? `label ${id} (job ids need the ops token)` : id;
}

function el(tag, props = {}) {
  return Object.assign(document.createElement(tag), props);
}

function cell(content, className = "", label = "") {
  const td = el("td", { className });
  if (label) td.dataset.label = label; // shown as a caption when rows stack (phones)
  td.append(content instanceof Node ? content : String(content));
  return td;
}

const last = (values) => (values.length ? values[values.length - 1] : 0);
const fmt = (x) => (x >= 10 ? Math.round(x) : x.toFixed(1));
const seconds = (s) => (s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(s < 10 ? 2 : 1)} s`);
const percent = (rate) => `${(rate * 100).toFixed(rate < 0.1 ? 1 : 0)} %`;
const ago = (ms) => (ms < 1500 ? "now" : `${Math.round(ms / 1000)} s ago`);

connect();
