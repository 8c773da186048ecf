// hostel dashboard: live reload, log following, rollback confirmation.
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
