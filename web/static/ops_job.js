// One job for operators: /ops/jobs/<id>.json (its log in pages), then, while it runs, a
// live tail of its own stream from the last event shown (the kit's watch). The log and
// the operators' audit are one list ordered by time; previews are painted from their
// blurhash, a task's own event kinds are lines like the rest.
// Every value goes in as text (textContent), never as markup.

import { paintBlurhash, watch } from "./jobcast.js";
import { $, BASE, ENDED, feed, problem } from "./ops_common.js";

const MAX_LINES = 3000; // lines kept on screen while tailing: the oldest go first
const JOB = $("job").dataset.jobId;
const url = (tail = "") => `${BASE}/ops/jobs/${encodeURIComponent(JOB)}${tail}`;
let job = null;
let last = ""; // the newest event id on screen
let tail = null;
const shown = new Set(); // event ids and audit entries on screen

const msOf = (id) => Number(id.split("-")[0]);

async function fetchJson(path) {
  const answer = await fetch(path, { headers: { Accept: "application/json" } });
  const data = await answer.json().catch(() => ({}));
  if (!answer.ok) throw new Error(data.error?.message ?? `HTTP ${answer.status}`);
  return data;
}

function line(at, kind, data, extra) {
  const li = document.createElement("li");
  li.dataset.at = String(at);
  li.dataset.kind = kind;
  const when = document.createElement("time");
  when.textContent = new Date(at).toLocaleTimeString();
  const name = document.createElement("span");
  name.className = "kind";
  name.textContent = kind;
  li.append(when, name);
  if (extra) li.appendChild(extra);
  const text = document.createElement("span");
  text.className = "data";
  text.textContent = typeof data === "string" ? data : JSON.stringify(data);
  li.appendChild(text);
  return li;
}

/** Put `li` in time order (events and audit entries interleave); keep MAX_LINES. */
function place(li) {
  const at = Number(li.dataset.at);
  const log = $("log");
  let before = log.lastElementChild;
  while (before && Number(before.dataset.at) > at) before = before.previousElementSibling;
  if (before) before.after(li);
  else log.prepend(li);
  while (log.children.length > MAX_LINES) {
    log.firstElementChild.remove();
    $("count").dataset.cut = "1";
  }
}

function event(id, kind, data) {
  if (shown.has(id)) return;
  shown.add(id);
  let extra = null;
  if (kind === "preview" && data?.blurhash) {
    extra = document.createElement("canvas");
    extra.width = 32;
    extra.height = 32;
    try {
      paintBlurhash(extra, data.blurhash);
    } catch {
      extra = null; // a hash the kit cannot read: the line still shows it
    }
  }
  const li = line(msOf(id), kind, data, extra);
  li.dataset.id = id;
  place(li);
  if (!last || msOf(id) > msOf(last) || (msOf(id) === msOf(last) && id > last)) last = id;
}

function audited(entry) {
  const key = JSON.stringify(entry);
  if (shown.has(key)) return;
  shown.add(key);
  const { action, by, at, ...rest } = entry;
  const li = line(at, `${action} by ${by}`, rest);
  li.classList.add("audit");
  place(li);
}

function fact(name, value) {
  if (value == null || value === "") return;
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = String(value);
  $("facts").append(dt, dd);
}

function jobLink(id) {
  const a = document.createElement("a");
  a.href = `${BASE}/ops/jobs/${encodeURIComponent(id)}`;
  a.textContent = id;
  return a;
}

function drawFacts() {
  $("facts").replaceChildren();
  const time = (ms) => (ms ? new Date(ms).toLocaleString() : null);
  fact("State", job.state);
  $("facts").lastChild.dataset.state = job.state;
  fact("Kind", job.kind);
  fact("Task", job.task);
  fact("Queue", job.queue);
  fact("Progress", job.state === "queued" && job.position ? `#${job.position} in line` : `${job.percent ?? 0} %`);
  fact("Queued", time(job.created));
  fact("Started", time(job.startedAt));
  fact("Finished", time(job.finishedAt));
  fact("Duration", job.durationMs != null ? `${(job.durationMs / 1000).toFixed(1)} s` : null);
  for (const [name, id] of [["Retry of", job.retryOf], ["Retried as", job.retriedAs]]) {
    if (!id) continue;
    fact(name, " ");
    $("facts").lastChild.replaceChildren(jobLink(id));
  }
  $("cancel").hidden = ENDED.has(job.state);
  $("retry").hidden = !(job.state === "failed" || job.state === "cancelled") || !!job.retriedAs;
}

function draw() {
  drawFacts();
  $("params").textContent = JSON.stringify(job.params, null, 2);
  $("attempts").replaceChildren(...job.attempts.map((a) => {
    const li = document.createElement("li");
    li.textContent = `attempt ${a.attempt ?? "?"} on ${a.worker ?? "?"} at ${new Date(msOf(a.at)).toLocaleTimeString()}`;
    return li;
  }));
  $("result-card").hidden = job.result == null;
  $("result").textContent = job.result == null ? "" : JSON.stringify(job.result, null, 2);
  $("error-card").hidden = job.state !== "failed";
  $("error").textContent = job.error?.error ?? "";
  $("traceback").hidden = !job.traceback;
  $("traceback").textContent = job.traceback ?? "";
  for (const entry of job.audit ?? []) audited(entry);
  counted();
}

function counted() {
  const cut = $("count").dataset.cut ? `; the newest ${MAX_LINES} lines shown` : "";
  $("count").textContent = `(${job.eventCount} events${cut})`;
}

async function more(after) {
  const page = await fetchJson(url(`.json?after=${encodeURIComponent(after)}`));
  for (const e of page.events) event(e.id, e.kind, e.data);
  $("older").hidden = !page.eventsNext;
  $("older").dataset.after = page.eventsNext ?? "";
}

/** The job afresh (its end, an action): facts, result, error, audit; the log goes on. */
async function refresh() {
  const first = !job;
  job = await fetchJson(url(".json"));
  draw();
  for (const e of job.events) event(e.id, e.kind, e.data);
  if (first) {
    $("older").hidden = !job.eventsNext;
    $("older").dataset.after = job.eventsNext ?? "";
  }
}

function ended() {
  tail?.close();
  tail = null;
  refresh().then(() => feed("ended", "Ended"));
}

/** While the job runs: its stream from the newest event shown (the rest is replayed). */
function follow() {
  if (ENDED.has(job.state)) return feed("ended", "Ended");
  tail = watch(JOB, {
    onAny: (kind, data, meta) => {
      if (!shown.has(meta.id)) job.eventCount += 1;
      event(meta.id, kind, data);
      counted();
      if (kind === "started") Object.assign(job, { state: "running", startedAt: msOf(meta.id), percent: 0 });
      if ((kind === "progress" || kind === "preview") && data.percent != null) job.percent = data.percent;
      drawFacts();
    },
    onQueue: (data) => {
      job.position = data.position;
      drawFacts();
    },
    onDone: ended,
    onFailed: ended,
    onCancelled: ended,
    onReconnecting: () => feed("reconnecting", "Reconnecting…"),
    onConnected: () => feed("live", "Live"),
    onClosed: ended, // 204: it ended before the newest event shown
  }, { base: BASE, lastEventId: last, token: job.token ?? "" });
}

async function act(action) {
  problem("");
  const answer = await fetch(url(`/${action}`), { method: "POST", headers: { Accept: "application/json" } });
  const data = await answer.json().catch(() => ({}));
  if (!answer.ok) return problem(data.error?.message ?? `${action}: HTTP ${answer.status}`);
  await refresh();
}

$("cancel").addEventListener("click", () => act("cancel"));
$("retry").addEventListener("click", () => act("retry"));
$("older").addEventListener("click", () => more($("older").dataset.after));

refresh()
  .then(follow)
  .catch((error) => {
    feed("down", "Not loaded");
    problem(error.message);
  });
