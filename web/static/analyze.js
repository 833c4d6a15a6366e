// The "Analyze an image" form (POST /jobs/analyze) and what an analyze card shows at the end.
//
// The form sends either nothing but a prompt, seed and colour count (the server draws the
// prompt's picture, then analyses it) or an uploaded picture as a data URL. A request
// body is small (16 KiB by default), so the page redraws the upload as a JPEG small
// enough to fit before it sends it.

// Characters of data URL that fit a 16 KiB body with the other fields.
const MAX_UPLOAD_CHARS = 15000;
const SIDES = [512, 448, 384, 320, 256, 224, 192, 160, 128, 96, 64];
const FIELDS = ["image", "prompt", "seed", "size", "colours"];

/** Show one of the forms, as the kind switch says. */
export function kindSwitch(root, forms) {
  if (!root) return;
  const pick = () => {
    const chosen = root.querySelector("input:checked")?.value ?? "imagine";
    for (const [name, form] of Object.entries(forms)) if (form) form.hidden = name !== chosen;
  };
  root.addEventListener("change", pick);
  pick();
}

/** Wire the analyze form: `launch(job)` makes and starts the job's card. */
export function analyzeForm(form, postUrl, launch) {
  if (!form) return;
  form.addEventListener("submit", (event) => send(event, form, postUrl, launch));
}

async function send(event, form, postUrl, launch) {
  event.preventDefault();
  clearErrors(form);
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  const posted = performance.now();
  try {
    const { body, title, width, height } = await formBody(form);
    let response;
    try {
      response = await fetch(postUrl, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(body),
      });
    } catch {
      return showErrors(form, { message: "Could not reach the server. Check your connection and try again." });
    }
    if (response.status === 413) return showErrors(form, { fields: { image: "that picture is too large to send" } });
    const json = await response.json().catch(() => ({}));
    if (response.status !== 202) return showErrors(form, json.error);
    launch({ kind: "analyze", ...json, prompt: title, width, height, posted });
  } catch (error) {
    showErrors(form, { fields: { image: error.message } });
  } finally {
    button.disabled = false;
  }
}

async function formBody(form) {
  const body = {};
  const prompt = form.elements.prompt.value.trim().replace(/\s+/g, " ");
  if (prompt) body.prompt = prompt;
  for (const name of ["seed", "colours"]) {
    const raw = form.elements[name].value.trim();
    if (raw !== "") body[name] = Number(raw);
  }
  const file = form.elements.image.files?.[0];
  if (!file) {
    const raw = form.elements.size.value.trim();
    if (raw !== "") body.size = Number(raw);
    const size = body.size > 0 ? body.size : 256;
    const title = `Analyze “${prompt || form.elements.prompt.placeholder}”`;
    return { body, title, width: size, height: size };
  }
  const shrunk = await shrink(file);
  body.image = shrunk.url;
  return { body, title: `Analyze ${file.name}`, width: shrunk.width, height: shrunk.height };
}

/** Redraw a picture as the largest JPEG data URL that fits MAX_UPLOAD_CHARS. */
async function shrink(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    throw new Error("this file is not a picture the browser can read");
  }
  const canvas = document.createElement("canvas");
  const context = canvas.getContext("2d");
  for (const side of SIDES) {
    const scale = Math.min(1, side / Math.max(bitmap.width, bitmap.height));
    canvas.width = Math.max(1, Math.round(bitmap.width * scale));
    canvas.height = Math.max(1, Math.round(bitmap.height * scale));
    context.fillStyle = "#fff"; // JPEG has no transparency: flatten on white, as the server does
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    for (const quality of [0.85, 0.7, 0.55]) {
      const url = canvas.toDataURL("image/jpeg", quality);
      if (url.length <= MAX_UPLOAD_CHARS) return { url, width: canvas.width, height: canvas.height };
    }
  }
  throw new Error("this picture cannot be made small enough to send");
}

function showErrors(form, error) {
  const fields = error?.fields ?? {};
  let known = false;
  for (const [name, reason] of Object.entries(fields)) {
    const note = form.querySelector(`#analyze-${CSS.escape(name)}-error`);
    const input = form.elements[name];
    if (!note || !input || !FIELDS.includes(name)) continue;
    known = true;
    input.setAttribute("aria-invalid", "true");
    note.textContent = reason[0].toUpperCase() + reason.slice(1);
  }
  if (!known) form.querySelector(".form-error").textContent = error?.message ?? "Something went wrong.";
  form.querySelector("[aria-invalid=true]")?.focus();
}

function clearErrors(form) {
  for (const note of form.querySelectorAll(".error")) note.textContent = "";
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
}

// ---- the finished analysis on its card ---------------------------------------------

/** Done: the thumbnail in the frame, the palette, the edge map and the light stats. */
export function showAnalysis(card, data, fileUrl) {
  const { seconds, width, height, palette = [], edges = {}, histogram = {} } = data ?? {};
  card.state("done", seconds ? `Analyzed in ${seconds.toFixed(1)} s` : "Analyzed");
  card.bar(100);
  if (width && height) card.size(width, height);
  const img = card.part("img");
  img.alt = `Thumbnail: ${card.part(".title").textContent}`;
  img.onload = () => {
    card.el.classList.add("loaded");
    card.timing("image");
  };
  img.onerror = () => card.state("failed", "The thumbnail could not be loaded.");
  img.src = fileUrl("thumbnail.png");
  const open = card.part(".open");
  open.href = fileUrl("report.json");
  open.textContent = "Open report";
  const box = card.part(".analysis");
  if (!box) return;
  box.replaceChildren(swatches(palette), edgeMap(fileUrl("edges.png"), edges), light(histogram));
  box.hidden = false;
}

function swatches(palette) {
  const list = element("ul", "swatches");
  list.setAttribute("aria-label", "Palette");
  for (const { hex, share } of Array.isArray(palette) ? palette : []) {
    if (!/^#[0-9a-f]{6}$/i.test(hex ?? "") || !(share > 0)) continue;
    const item = element("li", "swatch");
    item.style.background = hex;
    item.style.flexGrow = String(share);
    item.title = `${hex} · ${percent(share)}`;
    item.append(element("span", "visually-hidden", `${hex} ${percent(share)}`));
    list.append(item);
  }
  return list;
}

function edgeMap(src, { density }) {
  const figure = element("figure", "edges");
  const img = element("img");
  img.src = src;
  img.alt = "Edge map";
  img.decoding = "async";
  const caption = element("figcaption", "", density == null ? "Edges" : `Edges · ${percent(density)} of pixels`);
  figure.append(img, caption);
  return figure;
}

function light({ brightness, contrast, mean }) {
  const parts = [];
  if (brightness) parts.push(`Brightness ${brightness}${mean == null ? "" : ` (${percent(mean)})`}`);
  if (contrast != null) parts.push(`contrast ${Number(contrast).toFixed(2)}`);
  return element("p", "light", parts.join(" · "));
}

function percent(share) {
  const value = Number(share) * 100;
  return `${value < 10 ? value.toFixed(1) : Math.round(value)}%`;
}

function element(tag, className = "", text = "") {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}
