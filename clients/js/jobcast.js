// Jobcast's browser kit: one ES module, no build step, no dependency.
//
//   stream(request, handlers, options)   a reconnecting Server-Sent Events reader over fetch
//   watch(jobId, handlers, options)      one job (GET /jobs/<id>/stream)
//   watchMany(ids, handlers, options)    many jobs on ONE connection (GET /jobs/stream),
//                                        `share: true`: one connection for every tab
//   submit(kind, params, handlers, opts) POST-and-stream, resumed by GET after a drop
//   create(kind, params, options)        POST, the 202 answer as JSON
//   decodeBlurhash / paintBlurhash       a preview's blurhash → pixels / a canvas
//
// Handlers get (data, meta), meta = {jobId, id, kind}: onQueue, onStarted, onProgress,
// onPreview, onDone, onFailed, onCancelled, onReset (the server's snapshot: what follows
// replays the log), onEvent(kind, data, meta) for a kind of the job's own, onError
// ({code, message}) for a job the server refused or (without onFailed/onCancelled) ended
// badly, onAny(kind, data, meta) before each durable event, onReconnecting(info) and
// onConnected(). Every durable event is handed on once, in the log's order: a job's
// own event id ("ms-seq") is read from the composite cursor the multiplexed stream sends.

const TERMINAL = new Set(["done", "failed", "cancelled"]);
const SPECIFIC = {
  queued: "onQueue", started: "onStarted", progress: "onProgress", preview: "onPreview",
  done: "onDone", failed: "onFailed", cancelled: "onCancelled",
};
const MAX_JOBS = 100; // the server's default JOBCAST_MAX_STREAM_JOBS
const MAX_DELAY = 15000;
const KEEP_FRAMES = 1000; // per job, kept by shared tabs to replay to a tab that joins late

/** A refusal: the HTTP status and the API's JSON error ({code, message, fields?}). */
export class JobcastError extends Error {
  constructor(status, error = {}) {
    super(error.message ?? `HTTP ${status}`);
    this.name = "JobcastError";
    Object.assign(this, { status, code: error.code ?? "http_error", fields: error.fields });
  }
}

/** Is event id `a` ("ms-seq") later than `b`? Compared as numbers, never as text. */
export function later(a, b) {
  if (!b) return true;
  const [am, as] = a.split("-").map(Number);
  const [bm, bs] = b.split("-").map(Number);
  return am > bm || (am === bm && as > bs);
}

// ---- the reader ---------------------------------------------------------------------

/**
 * Read an SSE response and reconnect after a drop, as EventSource would, over fetch.
 * `request(lastEventId)` gives the URL (or {url, init}) of each attempt; the position is
 * sent as `?lastEventId=` unless the request says otherwise (no CORS preflight).
 * handlers: onEvent(kind, data, id) (id "" on a frame without one), onOpen(response),
 * onResponse(response) for an ok answer that is no stream (→ true: read, reconnect now),
 * onEnd() → true to reconnect after the server ended the response, onReconnecting(info),
 * onError(error) when it gives up (a 4xx, or 204: error null). Stop: options.signal, close().
 */
export function stream(request, handlers = {}, options = {}) {
  const stop = new AbortController();
  options.signal?.addEventListener("abort", () => stop.abort());
  const state = { last: options.lastEventId ?? "", retry: options.retry ?? 1000, failures: 0, done: false };
  const attempt = () => {
    const made = typeof request === "function" ? request(state.last) : request;
    const { url, init = {}, query = true } = typeof made === "string" ? { url: made } : made;
    const target = new URL(url, location.href);
    if (query && state.last) target.searchParams.set("lastEventId", state.last);
    return fetch(target, { ...init, signal: stop.signal, headers: { Accept: "text/event-stream", ...init.headers } });
  };
  (async () => {
    while (!stop.signal.aborted) {
      try {
        const response = await attempt();
        if (response.status === 204) return handlers.onError?.(null);
        if (!response.ok) {
          const body = await response.json().catch(() => ({}));
          const error = new JobcastError(response.status, body.error);
          if (response.status < 500 && response.status !== 408) {
            return handlers.onError?.(error);
          }
          throw error;
        }
        if (!(response.headers.get("Content-Type") ?? "").startsWith("text/event-stream")) {
          // An answer that is no stream: the caller may read it (submit's 202), else a drop.
          if (await handlers.onResponse?.(response)) continue;
          throw new JobcastError(response.status, { message: "The answer was not a stream." });
        }
        handlers.onOpen?.(response);
        const heard = await read(response, state, handlers);
        if (!handlers.onEnd?.()) return;
        if (!heard) throw new Error("The stream ended before any event."); // no tight loop
      } catch (error) {
        if (stop.signal.aborted) return;
        state.failures++;
        handlers.onReconnecting?.({ attempt: state.failures, error });
      }
      const delay = Math.min(MAX_DELAY, state.retry * 2 ** Math.max(0, state.failures - 1));
      await sleep(state.failures ? delay : 0, stop.signal);
    }
  })().finally(() => (state.done = true));
  return { close: () => stop.abort(), state };
}

async function read(response, state, handlers) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let frame = { kind: "", data: [], id: null };
  let heard = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return heard;
    buffer += value;
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (frame.id !== null) state.last = frame.id;
        if (frame.data.length) {
          state.failures = 0;
          heard = true;
          try {
            handlers.onEvent?.(frame.kind || "message", frame.data.join("\n"), frame.id ?? "");
          } catch (error) {
            reportError(error); // a handler's bug: the stream goes on (no reconnect, no replay)
          }
        }
        frame = { kind: "", data: [], id: null };
        continue;
      }
      const colon = line.indexOf(":");
      if (colon === 0) continue; // a comment: keep-alive
      const name = colon < 0 ? line : line.slice(0, colon);
      const field = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (name === "event") frame.kind = field;
      else if (name === "data") frame.data.push(field);
      else if (name === "id" && !field.includes("\0")) frame.id = field;
      else if (name === "retry" && /^\d+$/.test(field)) state.retry = Number(field);
    }
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => (clearTimeout(timer), resolve()), { once: true });
  });
}

// ---- the composite cursor (docs/protocol.md) ------------------------------------------

/** Each job's last id ("ms-seq"; null: reported gone) by index of the stream's list. */
export function cursorIds(text) {
  const raw = atob(text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat(-text.length & 3));
  let at = 1;
  const varint = () => {
    let value = 0;
    for (let scale = 1; ; scale *= 128) {
      const byte = raw.charCodeAt(at++);
      value += (byte & 127) * scale;
      if (byte < 128 || at > raw.length) return value;
    }
  };
  const ids = [];
  varint(); // how many jobs it covers
  at += 4; // their fingerprint
  const base = varint();
  while (at < raw.length) {
    const key = varint();
    const index = Math.floor(key / 2);
    if (key % 2) ids[index] = null;
    else {
      const zig = varint();
      ids[index] = `${base + (zig % 2 ? -(zig + 1) / 2 : zig / 2)}-${varint()}`;
    }
  }
  return ids;
}

// ---- jobs and their handlers ------------------------------------------------------------

/** The jobs one caller watches: each job's last id, whether it ended, where events go. */
class Jobs {
  constructor(handlers) {
    this.handlers = handlers;
    this.jobs = new Map();
    this.skipped = 0;
  }

  add(id, token = "") {
    if (!this.jobs.has(id)) this.jobs.set(id, { token, last: "", ended: false });
  }

  live() {
    return [...this.jobs].filter(([, job]) => !job.ended).map(([id, job]) => [id, job.token]);
  }

  /** A frame of job `jobId`: hand it on once (`ownId` "": derived, not logged). */
  feed(jobId, kind, data, ownId) {
    const job = this.jobs.get(jobId);
    if (!job) return;
    const h = this.handlers;
    const meta = { jobId, id: ownId, kind };
    if (kind === "error" && data.code) {
      job.ended = true; // unknown or refused: the stream reports it once
      return h.onError?.(data, meta);
    }
    if (kind === "reset") {
      job.last = ""; // what follows is the log the server still has: take it all
      return h.onReset?.(data, meta);
    }
    if (!ownId) return kind === "queued" ? h.onQueue?.(data, meta) : h.onEvent?.(kind, data, meta);
    if (!later(ownId, job.last)) return void this.skipped++;
    job.last = ownId;
    if (TERMINAL.has(kind)) job.ended = true;
    h.onAny?.(kind, data, meta);
    const name = SPECIFIC[kind];
    if (!name) return h.onEvent?.(kind, data, meta);
    if (h[name] || !(kind === "failed" || kind === "cancelled")) return h[name]?.(data, meta);
    h.onError?.({ code: kind, message: data.error ?? data.reason ?? kind, ...data }, meta);
  }
}

function jobsRoute(base, id) {
  return `${base}/jobs/${encodeURIComponent(id)}`;
}

function withToken(url, token) {
  return token ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : url;
}

/** One job on its own connection; resumes after a drop. options: base, token,
 *  lastEventId, signal, share (then it is watchMany of one). */
export function watch(jobId, handlers = {}, options = {}) {
  if (options.share) return watchMany([[jobId, options.token ?? ""]], handlers, options);
  const jobs = new Jobs(handlers);
  jobs.add(jobId, options.token);
  jobs.jobs.get(jobId).last = options.lastEventId ?? "";
  const base = options.base ?? "";
  const reader = stream(withToken(`${jobsRoute(base, jobId)}/stream`, options.token), {
    onEvent: (kind, text, id) => jobs.feed(jobId, kind, text ? JSON.parse(text) : {}, id),
    onOpen: () => handlers.onConnected?.(),
    onEnd: () => jobs.live().length > 0,
    onReconnecting: (info) => handlers.onReconnecting?.({ ...info, jobs: [jobId] }),
    onError: (error) => handlers.onClosed?.(error),
  }, options);
  return { close: reader.close, jobs };
}

// ---- many jobs, one connection --------------------------------------------------------

/** The multiplexed connection: its list of jobs, its cursor, the reader. Frames go to
 *  `sink(jobId, kind, data, ownId)`; the list only grows by appending (so the cursor stays
 *  valid) until every job on it ended; jobs past maxJobs wait for the next list. */
class Connection {
  constructor(options, sink, status) {
    Object.assign(this, { options, sink, status, list: [], tokens: new Map(), cursor: "" });
    this.ended = new Set();
    this.reader = null;
    this.timer = 0;
    this.opens = 0;
  }

  want(pairs) {
    let fresh = false;
    for (const [id, token] of pairs) {
      if (this.tokens.has(id) && !this.ended.has(id)) continue;
      if (this.tokens.has(id) && this.list.includes(id)) continue; // it ended on this stream
      this.tokens.set(id, token ?? "");
      fresh = true;
    }
    if (fresh) this.schedule();
  }

  /** Start again from a list and cursor another tab's connection had. */
  resume(list, cursor, tokens) {
    for (const [id, token] of tokens) this.tokens.set(id, token);
    if (list.length) Object.assign(this, { list, cursor });
    this.schedule();
  }

  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.open(), 0); // adds in one task: one reconnect
  }

  open() {
    if (this.list.every((id) => this.ended.has(id))) Object.assign(this, { list: [], cursor: "" });
    const waiting = [...this.tokens.keys()].filter((id) => !this.ended.has(id) && !this.list.includes(id));
    const room = waiting.slice(0, Math.max(0, (this.options.maxJobs ?? MAX_JOBS) - this.list.length));
    if (this.reader && !this.reader.state.done && !room.length) return; // the rest wait their turn
    this.reader?.close();
    this.list = this.list.concat(room);
    if (!this.list.length) return void (this.reader = null);
    const list = this.list;
    const signed = list.some((id) => this.tokens.get(id));
    const query = new URLSearchParams(list.map((id) => ["job", id]));
    if (signed) for (const id of list) query.append("token", this.tokens.get(id));
    if (this.options.idle) query.set("idle", "1");
    const url = `${this.options.base ?? ""}/jobs/stream?${query}`;
    this.opens++;
    const reader = (this.reader = stream(url, {
      onEvent: (kind, text, id) => reader === this.reader && this.frame(list, kind, text, id),
      onOpen: () => this.status(false),
      onEnd: () => list.some((id) => !this.ended.has(id)) || void this.schedule(), // more waiting?
      onReconnecting: (info) => this.status(true, info),
      onError: (error) => this.refused(list, error),
    }, { ...this.options, lastEventId: this.cursor }));
  }

  /** The server ended the stream for good: 204 (nothing left), or refused the request
   *  (e.g. more jobs than its JOBCAST_MAX_STREAM_JOBS): each job gets an error then. */
  refused(list, error) {
    for (const id of list) {
      if (this.ended.has(id)) continue;
      this.ended.add(id);
      const data = { jobId: id, code: error?.code ?? "ended", message: error?.message ?? "Nothing left to stream." };
      this.sink(id, "error", data, "", list, this.cursor);
    }
    this.schedule(); // jobs past maxJobs waited for this list to end
  }

  frame(list, kind, text, id) {
    const data = text ? JSON.parse(text) : {};
    const jobId = data.jobId;
    const index = list.indexOf(jobId);
    if (index < 0) return;
    let own = "";
    if (id) {
      this.cursor = id;
      own = cursorIds(id)[index] ?? "";
    }
    if (TERMINAL.has(kind) || (kind === "error" && data.code)) this.ended.add(jobId);
    this.sink(jobId, kind, data, own, list, this.cursor);
  }

  close() {
    clearTimeout(this.timer);
    this.reader?.close();
  }
}

/**
 * Watch many jobs over one connection. `ids`: job ids, or [id, token] pairs. options:
 * base (where Jobcast's routes start), signal, idle, share (one connection for all the
 * tabs of this origin). Returns {add(id, token), close(), connection, jobs}.
 */
export function watchMany(ids, handlers = {}, options = {}) {
  const jobs = new Jobs(handlers);
  const pairs = () => jobs.live();
  const shared = options.share && globalThis.BroadcastChannel && navigator.locks;
  const hub = shared ? Tab.of(options) : null;
  const connection = hub ? null : new Connection(
    options,
    (jobId, kind, data, own) => jobs.feed(jobId, kind, data, own),
    (down, info) => (down ? handlers.onReconnecting?.({ ...info }) : handlers.onConnected?.()),
  );
  const handle = {
    jobs,
    connection,
    add(id, token = "") {
      jobs.add(id, token);
      if (hub) hub.want(jobs, [[id, token]]);
      else connection.want([[id, token]]);
    },
    close() {
      if (hub) hub.drop(jobs);
      else connection.close();
    },
  };
  for (const item of ids) handle.add(...(Array.isArray(item) ? item : [item]));
  hub?.join(jobs, pairs);
  options.signal?.addEventListener("abort", () => handle.close());
  return handle;
}

// ---- tabs sharing one connection: a Web Locks leader, a BroadcastChannel -------------
//
// Every tab of an origin (and base) joins one channel. The tab holding the lock leads: its
// Connection streams the union of every tab's jobs and posts each frame (with the
// connection's list and cursor) on the channel; every tab keeps the frames it saw. A tab
// that wants jobs posts "want" and holds their live frames back until the leader answers
// with a "replay" of what it has seen of them (or a few seconds pass). When the leader's
// tab closes, its lock passes to another tab, which asks the others what they want
// ("roll") and resumes the last list from the last cursor it saw: nothing is replayed.

const REPLAY_WAIT = 3000; // ms a tab waits for the leader's replay of a job it asked for

class Tab {
  static of(options) {
    const base = options.base ?? "";
    Tab.tabs ??= new Map();
    if (!Tab.tabs.has(base)) Tab.tabs.set(base, new Tab(base, options));
    return Tab.tabs.get(base);
  }

  constructor(base, options) {
    Object.assign(this, { base, options, members: new Set(), frames: new Map(), pending: new Map() });
    Object.assign(this, { id: crypto.randomUUID(), list: [], cursor: "", tokens: new Map() });
    this.connection = null;
    this.channel = new BroadcastChannel(`jobcast:${base}`);
    this.channel.onmessage = ({ data }) => this.receive(data);
    navigator.locks.request(`jobcast-leader:${base}`, () => this.lead());
  }

  join(jobs, pairs) {
    this.members.add({ jobs, pairs });
    this.want(jobs, pairs());
  }

  drop(jobs) {
    for (const member of this.members) if (member.jobs === jobs) this.members.delete(member);
  }

  want(jobs, pairs) {
    if (!pairs.length) return;
    for (const [id, token] of pairs) this.tokens.set(id, token);
    if (this.connection) {
      for (const [id] of pairs) for (const frame of this.frames.get(id) ?? []) jobs.feed(...frame);
      return this.connection.want(pairs);
    }
    const ids = pairs.map(([id]) => id);
    for (const id of ids) if (!this.pending.has(id)) this.pending.set(id, []);
    this.channel.postMessage({ t: "want", pairs, from: this.id, replay: true });
    setTimeout(() => this.release(ids, new Set()), REPLAY_WAIT);
  }

  /** Hand on the frames held back for `ids` (those not in `given`, a replay's ids). */
  release(ids, given) {
    for (const id of ids) {
      const held = this.pending.get(id);
      this.pending.delete(id);
      for (const frame of held ?? []) if (!frame[3] || !given.has(frame[3])) this.deliver(frame);
    }
  }

  deliver(frame) {
    for (const { jobs } of this.members) jobs.feed(...frame);
  }

  keep(frame) {
    const [jobId, kind, data] = frame;
    const kept = this.frames.get(jobId) ?? [];
    if (kept.length < KEEP_FRAMES) kept.push(frame);
    this.frames.set(jobId, kept);
    if (TERMINAL.has(kind) || (kind === "error" && data.code)) this.tokens.delete(jobId);
  }

  async lead() {
    this.release([...this.pending.keys()], new Set()); // no one else will replay them now
    this.connection = new Connection(
      this.options,
      (jobId, kind, data, own, list, cursor) => {
        const message = { t: "frame", frame: [jobId, kind, data, own], list, cursor };
        this.channel.postMessage(message);
        this.receive(message);
      },
      (down, info) => {
        this.channel.postMessage({ t: "status", down, info: { attempt: info?.attempt } });
        this.receive({ t: "status", down, info });
      },
    );
    this.connection.resume(this.list, this.cursor, this.tokens);
    this.channel.postMessage({ t: "roll" });
    await new Promise(() => {}); // lead for as long as this tab lives
  }

  receive(message) {
    const { t } = message;
    if (t === "frame") {
      this.keep(message.frame);
      Object.assign(this, { list: message.list, cursor: message.cursor });
      const held = this.pending.get(message.frame[0]);
      if (held) held.push(message.frame);
      else this.deliver(message.frame);
    } else if (t === "replay" && message.to === this.id) {
      for (const frame of message.frames) this.deliver(frame);
      this.release(message.ids, new Set(message.frames.map((frame) => frame[3]).filter(Boolean)));
    } else if (t === "status") {
      for (const { jobs } of this.members) {
        const h = jobs.handlers;
        message.down ? h.onReconnecting?.({ ...message.info }) : h.onConnected?.();
      }
    } else if (t === "roll") {
      const pairs = [...this.members].flatMap((member) => member.pairs());
      if (pairs.length) this.channel.postMessage({ t: "want", pairs, from: this.id, replay: false });
    } else if (t === "want") {
      for (const [id, token] of message.pairs) this.tokens.set(id, token);
      if (!this.connection) return;
      this.connection.want(message.pairs);
      if (!message.replay) return;
      const ids = message.pairs.map(([id]) => id);
      const frames = ids.flatMap((id) => this.frames.get(id) ?? []);
      this.channel.postMessage({ t: "replay", to: message.from, ids, frames });
    }
  }
}

// ---- submitting -------------------------------------------------------------------------

/** POST a job; its 202 answer ({jobId, token?, position, …}), or a JobcastError. */
export async function create(kind, params, options = {}) {
  const response = await fetch(`${options.base ?? ""}/jobs/${encodeURIComponent(kind)}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json", ...options.headers },
    body: JSON.stringify(params),
    signal: options.signal,
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new JobcastError(response.status, body.error);
  return body;
}

/**
 * Submit a job and stream it in the same request (POST with Accept: text/event-stream);
 * after a drop, resume with GET /jobs/<id>/stream from the last id. The POST carries an
 * Idempotency-Key, so a POST that failed on the way is sent again safely. Resolves to
 * {jobId, token} once the job exists; rejects with a JobcastError if it is refused.
 */
export function submit(kind, params, handlers = {}, options = {}) {
  const base = options.base ?? "";
  const key = options.idempotencyKey ?? crypto.randomUUID();
  const job = { jobId: "", token: options.token ?? "" };
  const jobs = new Jobs(handlers);
  return new Promise((resolve, reject) => {
    options.signal?.addEventListener("abort", () => reject(options.signal.reason));
    const known = (jobId, location) => {
      if (job.jobId) return;
      const token = location ? new URL(location, globalThis.location.href).searchParams.get("token") : "";
      Object.assign(job, { jobId, token: token || job.token });
      jobs.add(jobId, job.token);
      resolve(job);
    };
    stream((last) => job.jobId
      ? { url: withToken(`${jobsRoute(base, job.jobId)}/stream`, job.token) }
      : { url: `${base}/jobs/${encodeURIComponent(kind)}`, query: false, init: {
          method: "POST", body: JSON.stringify(params),
          headers: { "Content-Type": "application/json", "Idempotency-Key": key },
        } },
    {
      onOpen: (response) => {
        const id = response.headers.get("X-Job-Id");
        if (id) known(id, response.headers.get("Location"));
      },
      onResponse: async (response) => {
        const body = await response.json().catch(() => ({}));
        if (typeof body.jobId !== "string") return false;
        if (body.token) job.token = body.token;
        known(body.jobId, body.status);
        return true;
      },
      onEvent: (name, text, id) => {
        const data = text ? JSON.parse(text) : {};
        if (!job.jobId && data.jobId) known(data.jobId, "");
        jobs.feed(job.jobId, name, data, id);
      },
      onEnd: () => jobs.live().length > 0,
      onReconnecting: (info) => handlers.onReconnecting?.({ ...info, jobs: [job.jobId] }),
      onError: (error) => (job.jobId ? handlers.onClosed?.(error) : reject(error)),
    }, options);
  });
}

// ---- blurhash ------------------------------------------------------------------------------
//
// The hash is base-83 text: a size flag (how many cosine components along x and y),
// the quantised largest AC magnitude, the DC (average) colour as 24-bit sRGB, then
// two digits per AC component, each packing three signed 19-level values. A pixel is
// the sum over components of colour × cos(πix/w) × cos(πjy/h), computed in linear
// light and converted back to sRGB.

const DIGITS =
  "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~";

/** Read `text` as a base-83 number. */
function base83(text) {
  let value = 0;
  for (const char of text) {
    const digit = DIGITS.indexOf(char);
    if (digit < 0) throw new Error(`blurhash: bad character ${char}`);
    value = value * 83 + digit;
  }
  return value;
}

function toLinear(channel) {
  const v = channel / 255;
  return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
}

function toSrgb(linear) {
  const v = Math.min(1, Math.max(0, linear));
  const s = v <= 0.0031308 ? v * 12.92 : 1.055 * v ** (1 / 2.4) - 0.055;
  return Math.trunc(s * 255 + 0.5);
}

/** A quantised AC value (0..18) back to a signed magnitude, undoing the square root. */
function unquantise(q, scale) {
  const v = (q - 9) / 9;
  return Math.sign(v) * v * v * scale;
}

/** The [r, g, b] linear colour of every component, DC first, and the grid size. */
function components(hash) {
  const flag = base83(hash[0]);
  const nx = (flag % 9) + 1;
  const ny = Math.floor(flag / 9) + 1;
  if (hash.length !== 4 + 2 * nx * ny) throw new Error("blurhash: wrong length");
  const scale = (base83(hash[1]) + 1) / 166;
  const dc = base83(hash.slice(2, 6));
  const colours = [[toLinear(dc >> 16), toLinear((dc >> 8) & 255), toLinear(dc & 255)]];
  for (let i = 1; i < nx * ny; i++) {
    const v = base83(hash.slice(4 + 2 * i, 6 + 2 * i));
    const q = [Math.floor(v / 361), Math.floor(v / 19) % 19, v % 19];
    colours.push(q.map((c) => unquantise(c, scale)));
  }
  return { nx, ny, colours };
}

/** Decode `hash` into `width`×`height` RGBA pixels (ready for ImageData). */
export function decodeBlurhash(hash, width, height) {
  const { nx, ny, colours } = components(hash);
  const cosX = cosines(nx, width);
  const cosY = cosines(ny, height);
  const out = new Uint8ClampedArray(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      let r = 0, g = 0, b = 0;
      for (let j = 0; j < ny; j++) {
        for (let i = 0; i < nx; i++) {
          const basis = cosX[x * nx + i] * cosY[y * ny + j];
          const c = colours[j * nx + i];
          r += c[0] * basis;
          g += c[1] * basis;
          b += c[2] * basis;
        }
      }
      const o = 4 * (y * width + x);
      out[o] = toSrgb(r);
      out[o + 1] = toSrgb(g);
      out[o + 2] = toSrgb(b);
      out[o + 3] = 255;
    }
  }
  return out;
}

/** cos(π·k·p/size) for every pixel p and component k, as a flat table. */
function cosines(count, size) {
  const table = new Float64Array(size * count);
  for (let p = 0; p < size; p++) {
    for (let k = 0; k < count; k++) table[p * count + k] = Math.cos((Math.PI * k * p) / size);
  }
  return table;
}

/** Paint `hash` onto `canvas` at the canvas's own size. */
export function paintBlurhash(canvas, hash) {
  const { width, height } = canvas;
  const image = new ImageData(decodeBlurhash(hash, width, height), width, height);
  canvas.getContext("2d").putImageData(image, 0, 0);
}
