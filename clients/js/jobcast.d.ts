// Type declarations of jobcast.js (the module itself is plain JavaScript, no build step).

export interface Meta {
  jobId: string;
  /** The job's own event id ("ms-seq"); "" for a derived event (a live place in line). */
  id: string;
  kind: string;
}

export interface Queue {
  jobId?: string;
  position: number | null;
  queueLength?: number | null;
  etaSeconds?: number | null;
}

export interface JobError {
  jobId?: string;
  /** "not_found", "bad_token" (the stream refused the job), or "failed" / "cancelled". */
  code: string;
  message: string;
  [field: string]: unknown;
}

export type Data = Record<string, any>;
type On<T = Data> = (data: T, meta: Meta) => void;

export interface Handlers {
  onQueue?: On<Queue>;
  onStarted?: On<{ attempt?: number } & Data>;
  onProgress?: On<{ percent: number; step?: number; steps?: number } & Data>;
  onPreview?: On<{ blurhash: string; width?: number; height?: number } & Data>;
  onDone?: On;
  onFailed?: On<{ error: string; retryable?: boolean } & Data>;
  onCancelled?: On<{ reason?: string } & Data>;
  /** The server's snapshot: the job's log follows again from its start. */
  onReset?: On;
  /** A kind of the job's own (log, step, delta, tool_call…). */
  onEvent?: (kind: string, data: Data, meta: Meta) => void;
  /** A job refused by the stream; also failed/cancelled when those handlers are absent. */
  onError?: On<JobError>;
  /** Before every durable event, whatever its kind. */
  onAny?: (kind: string, data: Data, meta: Meta) => void;
  onReconnecting?: (info: { attempt: number; error?: unknown; jobs?: string[] }) => void;
  onConnected?: () => void;
  /** A single-job stream or submit gave up (a 4xx; null: 204, nothing left). */
  onClosed?: (error: JobcastError | null) => void;
}

export interface Options {
  /** Where Jobcast's routes start: "" at the root, "/jobcast" when embedded. */
  base?: string;
  signal?: AbortSignal;
  /** The job's token when the server signs jobs (JOBCAST_SIGNING_KEY). */
  token?: string;
  /** Resume a single-job watch after this event id. */
  lastEventId?: string;
  /** First reconnect delay in ms until the server's `retry:` says otherwise. */
  retry?: number;
}

export interface ManyOptions extends Options {
  /** One connection for every tab of this origin (BroadcastChannel + Web Locks). */
  share?: boolean;
  /** Keep the connection open with keep-alives after every job ended (`?idle=1`). */
  idle?: boolean;
  /** Jobs per connection: the server's JOBCAST_MAX_STREAM_JOBS (default 100). */
  maxJobs?: number;
}

export interface JobState {
  token: string;
  last: string;
  ended: boolean;
}

export interface Jobs {
  handlers: Handlers;
  jobs: Map<string, JobState>;
  /** Durable events received again (after a rebuilt connection) and not handed on. */
  skipped: number;
}

export interface Watch {
  jobs: Jobs;
  close(): void;
}

export interface ManyWatch extends Watch {
  /** Add a job: the connection is reopened with it appended, from the same cursor. */
  add(jobId: string, token?: string): void;
}

export interface Submitted {
  jobId: string;
  token: string;
}

export class JobcastError extends Error {
  status: number;
  code: string;
  fields?: Record<string, string>;
}

export interface StreamHandlers {
  onEvent?: (kind: string, data: string, id: string) => void;
  onOpen?: (response: Response) => void;
  onResponse?: (response: Response) => void | Promise<void>;
  onEnd?: () => boolean;
  onReconnecting?: (info: { attempt: number; error: unknown }) => void;
  onError?: (error: JobcastError | null) => void;
}

export type StreamRequest =
  | string
  | ((lastEventId: string) => string | { url: string; init?: RequestInit; query?: boolean });

export function stream(
  request: StreamRequest,
  handlers?: StreamHandlers,
  options?: Options,
): { close(): void; state: { last: string; retry: number; failures: number; done: boolean } };

export function watch(jobId: string, handlers?: Handlers, options?: ManyOptions): Watch;
export function watchMany(
  ids: Array<string | [string, string]>,
  handlers?: Handlers,
  options?: ManyOptions,
): ManyWatch;
export function submit(
  kind: string,
  params: Data,
  handlers?: Handlers,
  options?: Options & { idempotencyKey?: string },
): Promise<Submitted>;
export function create(
  kind: string,
  params: Data,
  options?: { base?: string; signal?: AbortSignal; headers?: Record<string, string> },
): Promise<Data & { jobId: string; token?: string }>;
export function later(a: string, b: string): boolean;
export function cursorIds(cursor: string): Array<string | null | undefined>;
export function decodeBlurhash(hash: string, width: number, height: number): Uint8ClampedArray;
export function paintBlurhash(canvas: HTMLCanvasElement, hash: string): void;
