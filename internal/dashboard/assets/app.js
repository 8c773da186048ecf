// hostel dashboard: live reload, deploys as they go, log following, rollback
// confirmation.
// No framework and nothing fetched from elsewhere: the dashboard works offline.
"use strict";

if (document.body.hasAttribute("data-live")) {
  // The server tells when the daemon's state changed; the page is
  // rendered again by the server rather than patched here.
  const events = new EventSource("/events");
  events.addEventListener("change", () => location.reload());
}

for (const form of document.querySelectorAll("form[data-confirm]")) {
  form.addEventListener("submit", (ev) => {
    if (!confirm(form.dataset.confirm)) ev.preventDefault();
  });
}

const log = document.getElementById("log");
if (log) {
  const src = new EventSource(log.dataset.src);
  src.addEventListener("line", (ev) => {
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(ev.data + "\n");
    if (atEnd) log.scrollTop = log.scrollHeight;
  });
  src.addEventListener("failed", (ev) => {
    log.append("[" + ev.data + "]\n");
    src.close();
  });
}

// Deploys and rollbacks under way, line by line as the daemon says them,
// on every page: the stream starts with what they said so far, so a page
// that reloads mid-deploy shows it whole again.
const deploys = document.getElementById("deploys");
if (deploys) {
  const ops = new Map();
  const src = new EventSource("/deploys/stream");
  src.addEventListener("deploy", (ev) => {
    const d = JSON.parse(ev.data);
    let op = ops.get(d.op);
    if (!op) {
      const el = document.createElement("div");
      el.className = "deploy running";
      el.dataset.op = d.op;
      op = { el, head: document.createElement("b"), lines: document.createElement("pre"),
             title: d.kind + " " + d.op + " (started " + new Date(d.time).toLocaleTimeString() + ")" };
      op.head.textContent = op.title + ": running";
      el.append(op.head, op.lines);
      deploys.prepend(el);
      ops.set(d.op, op);
      deploys.hidden = false;
    }
    if (d.progress) op.lines.append(d.progress + "\n");
    if (d.end) {
      op.el.classList.remove("running");
      op.el.classList.add(d.error ? "failed" : "done");
      op.head.textContent = op.title + ": " + (d.error ? "failed: " + d.error : "done, generation " + d.generation + " is live");
    }
  });
}
