// The job browser's list, live: one page of /ops/jobs.json, then no more requests for it.
//   new jobs      the ops feed (/ops/stream?jobs=1) sends `event: job` for each job made; one
//                 that matches the filters goes on top
//   changes       the jobs on screen that have not ended are watched on ONE multiplexed
//                 /jobs/stream (the kit's watchMany): state, percent, place change in place
// Every value goes in as text (textContent), never as markup.

import { stream, watchMany } from "./jobcast.js";
import { $, BASE, ENDED, feed, problem } from "./ops_common.js";

const PER_STREAM = 100; // jobs per multiplexed stream (the server's default limit)
const BATCH_MS = 1000; // new jobs wait this long to be watched together
const MAX_ROWS = 200; // rows kept on screen: new jobs push the oldest off (Older brings them)
const body = document.querySelector("#jobs tbody");
const form = $("filters");
const rows = new Map(); // jobId → {job, tr}
let next = null;
let filters = {};
let muxes = []; // [{handle (the kit's watchMany), count (jobs added to it)}]
const waiting = []; // new jobs to watch with the next batch
let early = []; // new jobs the feed told of before the first page came (null: it came)

const msOf = (id) => (id ? Number(id.split("-")[0]) : null);
const time = (ms) => (ms ? new Date(ms).toLocaleTimeString() : "");

function cell(tr, text, name) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (name) td.dataset.col = name;
  tr.appendChild(td);
  return td;
}

function progressText(job) {
  if (job.state === "queued") return job.position ? `#${job.position} in line` : "waiting";
  return job.percent == null ? "" : `${job.percent} %`;
}

function duration(job) {
  if (!job.startedAt) return "";
  return `${(((job.finishedAt ?? Date.now()) - job.startedAt) / 1000).toFixed(1)} s`;
}

async function act(jobId, action) {
  problem("");
  const answer = await fetch(`${BASE}/ops/jobs/${encodeURIComponent(jobId)}/${action}`, {
    method: "POST",
    headers: { Accept: "application/json" },
  });
  const data = await answer.json().catch(() => ({}));
  if (!answer.ok) return problem(data.error?.message ?? `${action}: HTTP ${answer.status}`);
  if (action === "retry") {
    const job = rows.get(jobId)?.job;
    if (job) draw({ ...job, retriedAs: data.jobId });
  }
}

function button(text, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}

/** (Re)draw a job's row in place; a new one goes on top (`fresh`) or at the bottom. */
function draw(job, where = "bottom") {
  const known = rows.get(job.jobId);
  const tr = known?.tr ?? document.createElement("tr");
  tr.replaceChildren();
  tr.dataset.job = job.jobId;
  const link = document.createElement("a");
  link.href = `${BASE}/ops/jobs/${encodeURIComponent(job.jobId)}`;
  link.textContent = job.jobId;
  cell(tr, "", "job").appendChild(link);
  cell(tr, job.kind, "kind");
  cell(tr, job.state, "state").dataset.state = job.state ?? "";
  cell(tr, progressText(job), "progress");
  cell(tr, job.attempt || "", "attempt");
  cell(tr, job.worker, "worker");
  cell(tr, time(job.created), "created");
  cell(tr, time(job.startedAt), "started");
  cell(tr, time(job.finishedAt), "finished");
  cell(tr, duration(job), "duration");
  const actions = cell(tr, "", "actions");
  if (!ENDED.has(job.state)) actions.appendChild(button("Cancel", () => act(job.jobId, "cancel")));
  else if (job.state !== "succeeded" && !job.retriedAs) {
    actions.appendChild(button("Retry", () => act(job.jobId, "retry")));
  }
  rows.set(job.jobId, { job, tr });
  if (!known) {
    if (where === "top") {
      tr.classList.add("fresh");
      body.prepend(tr);
    } else body.appendChild(tr);
  }
}

function change(jobId, update) {
  const known = rows.get(jobId);
  if (known) draw({ ...known.job, ...update });
}

const handlers = {
  onQueue: (data, { jobId }) => change(jobId, { state: "queued", position: data.position }),
  onStarted: (data, { jobId, id }) =>
    change(jobId, { state: "running", worker: data.worker, attempt: data.attempt, startedAt: msOf(id), percent: 0 }),
  onProgress: (data, { jobId }) => change(jobId, { percent: data.percent }),
  onPreview: (data, { jobId }) => data.percent != null && change(jobId, { percent: data.percent }),
  onDone: (data, { jobId, id }) => change(jobId, { state: "succeeded", percent: 100, finishedAt: msOf(id) }),
  onFailed: (data, { jobId, id }) => change(jobId, { state: "failed", finishedAt: msOf(id) }),
  onCancelled: (data, { jobId, id }) => change(jobId, { state: "cancelled", finishedAt: msOf(id) }),
  onReset: (data, { jobId }) => change(jobId, { state: data.state, percent: data.percent, position: data.position }),
  onReconnecting: () => feed("reconnecting", "Reconnecting…"),
  onConnected: () => feed("live", "Live"),
};

/** Watch a job that has not ended, on a stream with room (at most PER_STREAM jobs each,
 *  the server's default JOBCAST_MAX_STREAM_JOBS); when every stream is full (of jobs
 *  that mostly ended), they start afresh with the unfinished rows only. */
function follow(job) {
  if (ENDED.has(job.state)) return;
  let slot = muxes.find((m) => m.count < PER_STREAM);
  if (!slot && muxes.length * PER_STREAM >= MAX_ROWS + PER_STREAM) {
    for (const m of muxes) m.handle.close();
    muxes = [];
    for (const { job: other } of rows.values()) if (other.jobId !== job.jobId) follow(other);
    slot = muxes.find((m) => m.count < PER_STREAM);
  }
  if (!slot) {
    slot = { handle: watchMany([], handlers, { base: BASE, maxJobs: PER_STREAM }), count: 0 };
    muxes.push(slot);
  }
  slot.handle.add(job.jobId, job.token ?? "");
  slot.count++;
}

/** New jobs are watched in batches: each addition reopens a multiplexed stream (its
 *  cursor stays valid, so only the new jobs' logs are read), once a second at most.
 *  Nothing is missed meanwhile: the stream starts with each job's log. */
function later(job) {
  waiting.push(job);
  if (waiting.length === 1) {
    setTimeout(() => {
      const batch = waiting.splice(0);
      for (const each of batch) if (rows.get(each.jobId)?.job) follow(rows.get(each.jobId).job);
    }, BATCH_MS);
  }
}

function unfollowAll() {
  waiting.splice(0);
  for (const m of muxes) m.handle.close();
  muxes = [];
}

function matches(job) {
  if (filters.state && filters.state !== "queued") return false;
  if (filters.kind && job.kind !== filters.kind) return false;
  if (filters.id && !job.jobId.startsWith(filters.id)) return false;
  return true;
}

function created(job) {
  if (early) return void early.push(job);
  if (rows.has(job.jobId) || !matches(job)) return;
  const row = { state: "queued", percent: 0, attempt: 0, ...job };
  draw(row, "top");
  later(row);
  while (rows.size > MAX_ROWS) {
    const tr = body.lastElementChild;
    const gone = rows.get(tr.dataset.job)?.job;
    rows.delete(tr.dataset.job);
    tr.remove();
    if (gone?.created) next = gone.created + 1; // "Older" reads from it again
    $("more").hidden = next == null;
  }
}

async function load(fresh) {
  problem("");
  const query = new URLSearchParams();
  if (fresh) {
    filters = {};
    for (const [name, value] of new FormData(form)) if (value) filters[name] = String(value);
  }
  for (const [name, value] of Object.entries(filters)) query.set(name, value);
  if (!fresh && next != null) query.set("before", String(next));
  const answer = await fetch(`${BASE}/ops/jobs.json?${query}`, { headers: { Accept: "application/json" } });
  const page = await answer.json().catch(() => ({}));
  if (!answer.ok) return problem(page.error?.message ?? `HTTP ${answer.status}`);
  if (fresh) {
    body.replaceChildren();
    rows.clear();
    unfollowAll();
  }
  for (const job of page.jobs ?? []) {
    draw(job);
    follow(job);
  }
  next = page.next;
  $("more").hidden = next == null;
}

function connect() {
  stream(`${BASE}/ops/stream?jobs=1`, {
    onOpen: () => feed("live", "Live"),
    onReconnecting: () => feed("reconnecting", "Reconnecting…"),
    onEnd: () => true, // the feed never ends: a closed response is a drop
    onError: () => feed("down", "Disconnected — reload to retry"),
    onEvent: (kind, data) => {
      if (kind === "job") created(JSON.parse(data));
      else if (kind === "resync") load(true); // the feed lost new jobs: read the page again
    },
  });
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  load(true);
});
$("more").addEventListener("click", () => load(false));
// Durations of running jobs tick on screen (no request: drawn from what is known).
setInterval(() => {
  for (const { job, tr } of rows.values()) {
    if (job.state === "running") tr.querySelector("[data-col=duration]").textContent = duration(job);
  }
}, 1000);
// The feed first, so no job created while the first page loads is missed.
connect();
load(true).then(() => {
  const told = early;
  early = null;
  for (const job of told ?? []) created(job);
});
