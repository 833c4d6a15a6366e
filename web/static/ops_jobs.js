// The job browser: pages of /ops/jobs.json, a job's detail from /ops/jobs/<id>.json.
// Every value goes in as text (textContent), never as markup.
const base = document.body.dataset.base || "";
const body = document.querySelector("#jobs tbody");
const more = document.getElementById("more");
const detail = document.getElementById("detail");
const form = document.getElementById("filters");
let next = null;

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  row.appendChild(td);
  return td;
}

async function show(id) {
  const answer = await fetch(`${base}/ops/jobs/${encodeURIComponent(id)}.json`);
  detail.hidden = false;
  detail.textContent = JSON.stringify(await answer.json(), null, 2);
}

async function load(fresh) {
  const query = new URLSearchParams();
  for (const [name, value] of new FormData(form)) if (value) query.set(name, String(value));
  if (!fresh && next != null) query.set("before", String(next));
  const answer = await fetch(`${base}/ops/jobs.json?${query}`);
  const page = await answer.json();
  if (fresh) body.replaceChildren();
  for (const job of page.jobs || []) {
    const row = document.createElement("tr");
    const link = document.createElement("a");
    link.href = "#";
    link.textContent = job.jobId;
    link.addEventListener("click", (event) => { event.preventDefault(); show(job.jobId); });
    cell(row, "").appendChild(link);
    cell(row, job.kind);
    cell(row, job.state).dataset.state = job.state || "";
    cell(row, job.percent);
    cell(row, job.attempt);
    cell(row, job.worker);
    cell(row, job.created ? new Date(job.created).toLocaleString() : "");
    cell(row, job.durationMs != null ? `${(job.durationMs / 1000).toFixed(1)} s` : "");
    body.appendChild(row);
  }
  next = page.next;
  more.hidden = next == null;
}

form.addEventListener("submit", (event) => { event.preventDefault(); load(true); });
more.addEventListener("click", () => load(false));
load(true);
