// agentcomm dashboard: swaps in each page's live part from the server's event stream
// (GET {base}/events?page=...; sent when the hub reports a change, at most once a second),
// ticks the ages shown every second, and sends redrive requests. No build step.
(function () {
  "use strict";
  const body = document.body;
  const base = body.dataset.base || "";
  const page = body.dataset.page || "agents";
  const live = document.getElementById("live");
  const dot = document.getElementById("live-dot");
  const state = document.getElementById("live-state");
  const updated = document.getElementById("updated");
  const toast = document.getElementById("toast");

  function age(seconds) {
    const s = Math.max(0, seconds);
    if (s < 60) return Math.round(s) + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + String(Math.round(s % 60)).padStart(2, "0") + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }

  function tick() {
    const now = Date.now() / 1000;
    document.querySelectorAll("[data-ts]").forEach(function (el) {
      const ts = parseFloat(el.dataset.ts);
      if (!isNaN(ts)) el.textContent = age(now - ts) + (el === updated ? " ago" : "");
    });
  }

  function setState(text, ok) {
    state.textContent = text;
    dot.className = "dot " + (ok ? "ok" : "down");
  }

  function show(text, bad) {
    toast.textContent = text;
    toast.className = bad ? "bad" : "ok";
    toast.hidden = false;
    clearTimeout(show.timer);
    show.timer = setTimeout(function () { toast.hidden = true; }, 4000);
  }

  function connect() {
    const source = new EventSource(base + "/events?page=" + encodeURIComponent(page));
    source.onopen = function () { setState("live", true); };
    source.addEventListener("update", function (event) {
      const update = JSON.parse(event.data);
      live.innerHTML = update.html;
      body.dataset.version = String(update.version);
      updated.dataset.ts = String(update.at);
      tick();
    });
    source.addEventListener("closed", function () {
      setState("hub closed", false);
      source.close();
    });
    source.onerror = function () { setState("reconnecting", false); };
  }

  live.addEventListener("click", function (event) {
    const button = event.target.closest("button.redrive");
    if (!button) return;
    button.disabled = true;
    const request = { agent: button.dataset.agent };
    if (button.dataset.id) request.ids = [button.dataset.id];
    fetch(base + "/api/redrive", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request),
    })
      .then(function (response) { return response.json(); })
      .then(function (answer) {
        if (answer.error) { show(answer.error, true); button.disabled = false; }
        else show("Requeued " + answer.requeued + " message(s) to " + request.agent + ".", false);
      })
      .catch(function (err) { show(String(err), true); button.disabled = false; });
  });

  tick();
  setInterval(tick, 1000);
  connect();
})();
