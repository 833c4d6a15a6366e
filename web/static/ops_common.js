// What the job browser's two pages (the list, ops_jobs.js, and one job, ops_job.js) share:
// the app's base path, the ended states, and the problem and feed lines at their top.

export const BASE = document.body.dataset.base ?? "";
export const ENDED = new Set(["succeeded", "failed", "cancelled"]);
export const $ = (id) => document.getElementById(id);

export function problem(text) {
  $("problem").hidden = !text;
  $("problem").textContent = text ?? "";
}

export function feed(state, text) {
  $("feed").dataset.state = state;
  $("feed-text").textContent = text;
}
