// The progressive-reveal page: a form that POSTs /jobs/imagine and one card per job, every
// card fed by ONE multiplexed connection (jobcast.js watchMany; the tabs of this origin
// share it).
//
//   queued  → "#3 in line · about 20 s"      (derived updates carry no id)
//   started → progress bar                   progress → bar + "step 4 of 20"
//   preview → blurhash on a canvas, blurred  done → the image fades in over it
//   failed / cancelled → the message.
//
// Every durable event (one with an id) is applied at most once, in id order, and noted in
// window.__jobcast.log[jobId] as [id, phase] so tests can compare it with the server's log.
//
// With JOBCAST_SIGNING_KEY on the server, a job comes with a token: every request for the
// job carries it (stream, status, cancel, image), and so does the card's shared link.

import { Activity } from "./activity.js";
import { analyzeForm, kindSwitch, showAnalysis } from "./analyze.js";
import { create, JobcastError, paintBlurhash, watch, watchMany } from "./jobcast.js";

const TERMINAL = new Set(["done", "failed", "cancelled"]);
const MAX_IN_URL = 12;
// Where Jobcast's routes start ("" at the root, "/jobcast" embedded in another app): the
// page says, so every URL below is built on it.
const BASE = document.body.dataset.base ?? "";
const PICTURE_KINDS = new Set(["imagine", "analyze", "contact-sheet"]);
const debug = (window.__jobcast = { log: {}, positions: {}, timings: {}, cards: {}, watches: [] });

const form = document.getElementById("imagine");
const list = document.getElementById("jobs");
const template = document.getElementById("card");

function queuedText({ position, etaSeconds }) {
  if (position == null) return "Waiting in line";
  const eta = etaSeconds == null ? "" : ` · about ${duration(etaSeconds)}`;
  return `#${position} in line${eta}`;
}

function duration(seconds) {
  return seconds < 90 ? `${Math.max(1, Math.round(seconds))} s` : `${Math.round(seconds / 60)} min`;
}

// Every card's events: the kit hands each durable event on once, in order, by job.
const card = (fn) => (data, meta) => {
  const target = debug.cards[meta.jobId];
  if (target && !target.finished) fn(target, data, meta);
};
const handlers = {
  onAny: (kind, data, meta) => card((c) => c.applied(meta.id, kind))(data, meta),
  onQueue: card((c, data) => c.queued(data)),
  onStarted: card((c, data) => c.started(data)),
  onProgress: card((c, data) => c.progress(data)),
  onPreview: card((c, data) => c.preview(data)),
  onDone: card((c, data) => (c.done(data), c.close())),
  onFailed: card((c, data) => (c.failed(data), c.close())),
  onCancelled: card((c, data) => (c.cancelled(data), c.close())),
  onReset: card((c, data) => c.restart(data)),
  // A canvas's `child` (a child started or ended), else the job's own kinds: log, step, delta…
  onEvent: (kind, data, meta) =>
    card((c) => (kind === "child" ? c.child(data) : c.activity.receive(kind, data)))(data, meta),
  onError: card((c) => c.recover()), // the stream refused this job: ask its status
  onReconnecting: () => live().forEach((c) => c.connection("reconnecting…")),
  onConnected: () => live().forEach((c) => c.connection("")),
};
const many = watchMany([], handlers, { base: BASE, share: true });
debug.watches.push(many);
Object.defineProperty(debug, "skipped", { get: () => debug.watches.reduce((n, w) => n + w.jobs.skipped, 0) });
const live = () => Object.values(debug.cards).filter((c) => !c.finished);

class Card {
  constructor(job) {
    this.id = job.jobId;
    this.kind = job.kind || "imagine";
    this.token = job.token || "";
    this.lastId = "";
    this.finished = false;
    this.retries = 0;
    this.el = template.content.firstElementChild.cloneNode(true);
    this.part = (name) => this.el.querySelector(name);
    this.el.dataset.kind = this.kind;
    // A kind of the app's own has no picture to reveal: its card is bar, log and result.
    this.el.classList.toggle("generic", !PICTURE_KINDS.has(this.kind));
    this.activity = new Activity(this.el);
    this.describe(job);
    debug.log[this.id] = [];
    debug.positions[this.id] = [];
    debug.cards[this.id] = this;
    list.prepend(this.el);
  }

  describe({ jobId, prompt, width, height }) {
    this.el.dataset.job = jobId;
    const title = prompt || "Untitled";
    this.part(".title").textContent = title;
    this.part(".bar").setAttribute("aria-label", `Progress of “${title}”`);
    this.part(".cancel").setAttribute("aria-label", `Cancel “${title}”`);
    this.part(".share").href = `${BASE}/?${linkQuery([this])}`;
    this.part(".share").addEventListener("click", (e) => this.copyLink(e));
    this.part(".cancel").addEventListener("click", () => this.cancel());
    if (width && height) this.size(width, height);
  }

  /** Reserve the final aspect ratio now, so nothing moves when the picture arrives. */
  size(width, height) {
    this.part(".frame").style.aspectRatio = `${width} / ${height}`;
    const canvas = this.part(".blur");
    const scale = 32 / Math.max(width, height);
    const w = Math.max(1, Math.round(width * scale));
    const h = Math.max(1, Math.round(height * scale));
    if (canvas.width !== w || canvas.height !== h) [canvas.width, canvas.height] = [w, h]; // clears it
    const img = this.part("img");
    img.width = width;
    img.height = height;
  }

  /** Watch the job on the page's one connection. */
  start() {
    many.add(this.id, this.token);
  }

  url(route) {
    return jobUrl(this.id, this.token, route);
  }

  /** A file the job saved (`job.save_file`), with its token if any. */
  file(name) {
    return resultUrl(this.id, this.token, name);
  }

  withToken(href) {
    return withToken(href, this.token);
  }

  close() {
    this.finished = true;
    this.connection("");
  }

  applied(id, kind) {
    this.connection("");
    this.lastId = id;
    debug.log[this.id].push([id, kind]);
  }

  /** A `reset`: what follows is the log the server still has (possibly older than our
   *  last id, e.g. after a Redis crash lost its last second), so start the card over. */
  restart(snap) {
    this.lastId = "";
    this.activity.clear();
    this.reset(snap);
  }

  /** The stream reported the job (not found, or refused): its status says whether it is
   *  gone, ended, or still on (then watch it again on its own from its last id). */
  async recover() {
    const delay = Math.min(15000, 1000 * 2 ** this.retries++);
    await new Promise((resolve) => setTimeout(resolve, delay));
    let response;
    try {
      response = await fetch(this.url(""), { headers: { Accept: "application/json" } });
    } catch {
      return this.recover(); // the server is still away
    }
    if (response.status === 404) return this.gone();
    if (!response.ok) return this.recover();
    const snap = await response.json();
    if (TERMINAL.has(phaseOf(snap.state))) return this.reset(snap), this.close();
    const options = { base: BASE, token: this.token, lastEventId: this.lastId };
    const again = () => this.recover(); // refused again, or nothing left: ask the status
    debug.watches.push(watch(this.id, { ...handlers, onError: again, onClosed: again }, options));
  }

  connection(text) {
    this.part(".conn").textContent = text;
    this.el.classList.toggle("reconnecting", text !== "");
  }

  state(name, text) {
    this.el.dataset.state = name;
    this.part(".status").textContent = text;
  }

  bar(percent) {
    const bar = this.part(".bar");
    bar.setAttribute("aria-valuenow", String(percent));
    bar.style.setProperty("--percent", `${percent}%`);
  }

  queued(data) {
    if (this.el.dataset.state !== "queued") return;
    this.state("queued", queuedText(data));
    if (data.position != null) {
      this.part(".badge").textContent = `#${data.position}`;
      debug.positions[this.id].push(data.position);
    }
  }

  started({ attempt }) {
    if (attempt > 1) this.activity.restart(attempt);
    const verb = { analyze: "Analyzing", imagine: "Rendering" }[this.kind] ?? "Running";
    this.state("running", attempt > 1 ? `${verb} (attempt ${attempt})…` : `${verb}…`);
    this.bar(0);
  }

  progress({ percent, step, steps }) {
    this.state("running", `Step ${step} of ${steps} · ${percent}%`);
    this.bar(percent);
  }

  // A canvas (contact sheet): a strip of thumbnails, one per child that sends a preview.
  thumb(id) {
    let strip = this.part(".strip");
    if (!strip) {
      strip = document.createElement("ol");
      strip.className = "strip";
      this.part(".frame").after(strip);
    }
    const n = (el) => Number(el.dataset.child.split(".").pop());
    let item = [...strip.children].find((el) => el.dataset.child === id);
    if (item) return item;
    item = document.createElement("li");
    item.dataset.child = id;
    item.innerHTML = '<canvas width="16" height="16"></canvas><img alt="">';
    strip.insertBefore(item, [...strip.children].find((el) => n(el) > n(item)) ?? null);
    return item;
  }

  child({ child, state }) {
    const item = [...(this.part(".strip")?.children ?? [])].find((el) => el.dataset.child === child);
    if (!item) return;
    item.dataset.state = state;
    if (state !== "succeeded") return;
    const img = item.querySelector("img");
    img.onload = () => item.classList.add("sharp");
    img.src = resultUrl(child, this.token, "image.png"); // a canvas's token opens its children
  }

  preview({ blurhash, width, height, child }) {
    if (child) {
      const item = this.thumb(child);
      try {
        paintBlurhash(item.querySelector("canvas"), blurhash);
        item.classList.add("blurred");
      } catch {} // a hash we cannot read: an empty tile
      return;
    }
    if (width && height) this.size(width, height);
    try {
      paintBlurhash(this.part(".blur"), blurhash);
    } catch {
      return; // a hash we cannot read: keep the placeholder
    }
    this.el.classList.add("previewed");
    requestAnimationFrame(() => this.timing("preview"));
  }

  done(data) {
    if (data.results) {
      // A canvas: its picture is the last child's (a contact sheet's grid).
      const picture = data.results.findLast((r) => r?.url);
      data = picture ? { ...picture, seconds: 0 } : { result: data.results };
    }
    if (this.kind === "analyze" || data.palette) return showAnalysis(this, data, (name) => this.file(name));
    const { url, width, height, seconds } = data;
    this.state("done", seconds ? `Done in ${seconds.toFixed(1)} s` : "Done");
    this.bar(100);
    if (!url) return this.result(data); // a job of the app's own kind: its return value
    if (width && height) this.size(width, height);
    const img = this.part("img");
    img.alt = this.part(".title").textContent;
    img.onload = () => {
      this.el.classList.add("loaded");
      this.timing("image");
    };
    img.onerror = () => this.state("failed", "The picture could not be loaded.");
    const src = this.withToken(url);
    img.src = src;
    this.part(".open").href = src;
  }

  /** Show a result that is no picture: its JSON, short. */
  result(data) {
    const out = this.part(".result") ?? this.el.appendChild(document.createElement("pre"));
    out.className = "result";
    const text = JSON.stringify(data, null, 1);
    out.textContent = text.length > 600 ? `${text.slice(0, 600)}…` : text;
  }

  failed({ error, retryable }) {
    this.state("failed", error + (retryable ? " Please try again." : ""));
  }

  cancelled({ reason }) {
    this.state("cancelled", reason ? `Cancelled (${reason})` : "Cancelled");
  }

  /** The server could not fill our gap: show its snapshot instead. */
  reset(snap) {
    const phase = phaseOf(snap.state);
    if (snap.width && snap.height) this.size(snap.width, snap.height);
    if (snap.preview) this.preview(snap.preview);
    if (phase === "queued") return this.queued(snap);
    if (phase === "done") return this.done(snap.result ?? { url: snap.url });
    if (phase === "failed") return this.failed({ error: snap.error || "Failed." });
    if (phase === "cancelled") return this.cancelled({});
    this.state("running", `Rendering · ${snap.percent}%`);
    this.bar(snap.percent);
  }

  gone() {
    this.close();
    this.state("failed", "This job is gone: it expired or never existed.");
  }

  async cancel() {
    const button = this.part(".cancel");
    button.disabled = true;
    button.textContent = "Cancelling…";
    const response = await fetch(this.url(""), { method: "DELETE" }).catch(() => null);
    if (response && response.status !== 409 && response.ok) return;
    button.disabled = false;
    button.textContent = "Cancel";
  }

  async copyLink(event) {
    if (!navigator.clipboard) return; // the link opens the job in a new tab instead
    event.preventDefault();
    const link = this.part(".share");
    try {
      await navigator.clipboard.writeText(link.href);
      link.textContent = "Link copied";
    } catch {
      link.textContent = "Copy failed";
    }
    setTimeout(() => (link.textContent = "Copy link"), 2000);
  }

  timing(name) {
    const t = (debug.timings[this.id] ??= {});
    t[name] ??= performance.now();
  }
}

/** A URL of a job's routes (`route`: "", "/stream"), with its token if any: the generic
 *  /jobs routes, which serve every kind. */
function jobUrl(jobId, token, route) {
  return withToken(`${BASE}/jobs/${encodeURIComponent(jobId)}${route}`, token);
}

/** The URL of a file a job saved: GET /jobs/<id>/result/<name>. */
function resultUrl(jobId, token, name) {
  const path = `/jobs/${encodeURIComponent(jobId)}/result/${encodeURIComponent(name)}`;
  return withToken(`${BASE}${path}`, token);
}

/** A URL the server handed out for a job (`done`'s url has none), with the job's token set. */
function withToken(href, token) {
  if (!href) return href;
  const url = new URL(href, location.href);
  if (url.origin !== location.origin) return url.href;
  if (token) url.searchParams.set("token", token);
  return url.pathname + url.search;
}

function phaseOf(state) {
  return { succeeded: "done", running: "running" }[state] ?? state;
}

// ---- the form ----------------------------------------------------------------------

function formBody() {
  const body = { prompt: form.prompt.value };
  for (const name of ["width", "height", "steps", "seed"]) {
    const raw = form[name].value.trim();
    if (raw !== "") body[name] = Number(raw);
  }
  return body;
}

function showErrors(error) {
  const fields = error?.fields ?? {};
  for (const [name, reason] of Object.entries(fields)) {
    const input = form.elements[name];
    const note = document.getElementById(`${name}-error`);
    if (!input || !note) continue;
    input.setAttribute("aria-invalid", "true");
    note.textContent = reason[0].toUpperCase() + reason.slice(1);
  }
  const known = Object.keys(fields).some((name) => document.getElementById(`${name}-error`));
  if (!known) document.getElementById("form-error").textContent = error?.message ?? "Something went wrong.";
  form.querySelector("[aria-invalid=true]")?.focus();
}

function clearErrors() {
  for (const note of form.querySelectorAll(".error")) note.textContent = "";
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
}

async function submit(event) {
  event.preventDefault();
  clearErrors();
  const body = formBody();
  const button = form.querySelector("button");
  button.disabled = true;
  const posted = performance.now();
  try {
    const json = await create("imagine", body, { base: BASE });
    const width = body.width ?? 512;
    const height = body.height ?? 512;
    const card = new Card({ ...json, prompt: body.prompt.trim().replace(/\s+/g, " "), width, height });
    debug.timings[card.id] = { posted };
    card.queued(json);
    card.start();
    remember();
  } catch (error) {
    if (error instanceof JobcastError) return showErrors(error);
    showErrors({ message: "Could not reach the server. Check your connection and try again." });
  } finally {
    button.disabled = false;
  }
}

// ---- shareable links: <base>/?job=<id>[&token=<t>][&job=<id>[&token=<t>]…] ----------------
// A token belongs to the job just before it.

function linkQuery(cards) {
  const query = new URLSearchParams();
  for (const { id, token } of cards) {
    query.append("job", id);
    if (token) query.append("token", token);
  }
  return query.toString();
}

/** Keep the address bar pointing at the jobs on the page, so it can be shared or reloaded. */
function remember() {
  const cards = [...list.children].map((el) => debug.cards[el.dataset.job]);
  const query = linkQuery(cards.slice(0, MAX_IN_URL).reverse());
  history.replaceState(null, "", query ? `${BASE}/?${query}` : `${BASE}/`);
}

/** A linked job's status (null: gone), fetched before its card is made. */
async function follow(jobId, token) {
  const response = await fetch(jobUrl(jobId, token, "")).catch(() => null);
  return [jobId, token, response?.ok ? await response.json() : null];
}

/** The jobs of the address bar, each with its token ("" without one). */
function linked() {
  const jobs = new Map();
  let last = null;
  for (const [name, value] of new URLSearchParams(location.search)) {
    if (name === "job") jobs.set((last = value), jobs.get(value) ?? "");
    else if (name === "token" && last !== null) jobs.set(last, value);
  }
  return jobs;
}

/** The linked jobs: their statuses at once, then all of them on the one connection. */
async function restore() {
  const snaps = await Promise.all([...linked()].map(([id, token]) => follow(id, token)));
  for (const [jobId, token, snap] of snaps) {
    const card = new Card({ ...(snap ?? {}), jobId, token });
    if (snap) card.start();
    else card.gone();
  }
}

/** A job another form posted (its 202 answer, plus what the card shows): card it, watch it. */
function launch(job) {
  const card = new Card(job);
  debug.timings[card.id] = { posted: job.posted };
  card.queued(job);
  card.start();
  remember();
  return card;
}

form.addEventListener("submit", submit);
kindSwitch(document.getElementById("kinds"), { imagine: form, analyze: document.getElementById("analyze") });
analyzeForm(document.getElementById("analyze"), `${BASE}/jobs/analyze`, launch);
restore();
