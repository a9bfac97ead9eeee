// Refreshes the page's content from the server every 15 s (the same HTML, as a fragment), and
// sends the re-processing form as JSON. The page works without it; this only keeps it current.
(function () {
  "use strict";
  var main = document.getElementById("content");
  if (!main) return;
  var every = parseInt(main.getAttribute("data-refresh-ms"), 10) || 15000;

  function fragmentUrl() {
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    return url.toString();
  }

  function refresh() {
    if (document.hidden || main.querySelector("form#requeue :focus, details[open]")) return; // not while the operator reads or types
    fetch(fragmentUrl(), { credentials: "same-origin", headers: { Accept: "text/html" } }).then(function (res) {
      if (res.status === 401 || res.redirected) { window.location.reload(); return null; }
      return res.ok ? res.text() : null;
    }).then(function (html) {
      if (html) { main.innerHTML = html; bind(); }
    }).catch(function () { /* the next tick tries again */ });
  }

  function bind() {
    var form = document.getElementById("requeue");
    if (!form || form.dataset.bound) return;
    form.dataset.bound = "1";
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var out = form.querySelector("output");
      var body = {
        region: form.region.value,
        since: form.since.value.trim(),
        until: form.until.value.trim(),
        reasons: form.reasons.value.split(",").map(function (s) { return s.trim(); }).filter(Boolean),
        dry_run: form.dry_run.checked
      };
      out.textContent = "Starting…";
      fetch(form.getAttribute("data-endpoint"), {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(body)
      }).then(function (res) {
        return res.json().then(function (data) { return { ok: res.ok, data: data }; });
      }).then(function (r) {
        out.textContent = "";
        if (!r.ok) { out.textContent = "Refused: " + (r.data.detail || "error"); return; }
        var a = document.createElement("a");
        a.href = r.data.url; a.target = "_top"; a.textContent = r.data.dag_id + " run " + r.data.dag_run_id;
        out.appendChild(document.createTextNode((body.dry_run ? "Dry run started: " : "Started: ")));
        out.appendChild(a);
        if (r.data.note) out.appendChild(document.createTextNode(" — " + r.data.note));
      }).catch(function (e) { out.textContent = "Failed: " + e; });
    });
  }

  bind();
  setInterval(refresh, every);
})();
