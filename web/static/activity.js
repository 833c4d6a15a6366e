// A card's activity: the job's own events, under the card.
//
//   log   {message, level}        → a line of the list ("Palette: 5 colours")
//   step  {name, index?, total?}  → a line "Step 2 of 5 · palette"
//   delta {text}                  → appended to one text block (the texts concatenate;
//                                   a `started` of attempt 2+ begins the text again)
//   any other kind listened to    → a line "kind · name" (e.g. tool_call · search)
//
// The list keeps the last KEEP lines, newest last, and is announced politely. The card
// applies each durable event once, in id order, before it gets here.

export const CUSTOM_KINDS = ["log", "step", "delta", "tool_call"];
const KEEP = 8;
const LEVELS = new Set(["debug", "info", "warning", "error"]);

export class Activity {
  constructor(root) {
    this.list = root.querySelector(".activity");
    this.text = root.querySelector(".delta");
  }

  receive(kind, data) {
    if (kind === "delta") return this.append(data.text);
    if (kind === "log") return this.line(String(data.message ?? ""), LEVELS.has(data.level) ? data.level : "info");
    if (kind === "step") return this.line(stepText(data), "step");
    return this.line(otherText(kind, data), "event");
  }

  line(text, kind) {
    if (!this.list) return;
    const item = document.createElement("li");
    item.className = kind;
    item.textContent = text;
    this.list.append(item);
    while (this.list.children.length > KEEP) this.list.firstElementChild.remove();
    this.list.hidden = false;
  }

  append(text) {
    if (!this.text || typeof text !== "string" || text === "") return;
    this.text.textContent += text;
    this.text.hidden = false;
    this.text.scrollTop = this.text.scrollHeight; // follow the end as it grows
  }

  /** A new attempt (the worker was lost): its text starts over, its lines follow on. */
  restart(attempt) {
    if (this.text) this.text.textContent = "";
    this.line(`Attempt ${attempt}: starting again`, "event");
  }

  /** The server replays the log from the start after a `reset`: begin again. */
  clear() {
    if (this.list) {
      this.list.replaceChildren();
      this.list.hidden = true;
    }
    if (this.text) {
      this.text.textContent = "";
      this.text.hidden = true;
    }
  }
}

function stepText({ name, index, total }) {
  const label = String(name ?? "");
  if (!Number.isInteger(index)) return `Step · ${label}`;
  return Number.isInteger(total) ? `Step ${index} of ${total} · ${label}` : `Step ${index} · ${label}`;
}

function otherText(kind, data) {
  const name = data.name ?? data.message ?? data.text;
  return name == null ? kind : `${kind} · ${String(name)}`;
}
