// Keyboard-first review. Keys: see templates/catalog_review/_keys.html (press ? on any review page).
(function () {
  "use strict";

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return Date.now().toString(36) + Math.random().toString(36).slice(2);
  }

  // one client request id per rendered decision form: a retried POST is recognised, not doubled
  function stampForms(root) {
    (root || document).querySelectorAll("form.decide input[name=client_request_id]").forEach(function (input) {
      if (!input.value) input.value = uuid();
    });
  }

  function heatmapOn(on) {
    document.body.classList.toggle("heat-on", on);
    try { localStorage.setItem("catalog-review-heat", on ? "1" : "0"); } catch (e) { /* private mode */ }
  }

  function click(selector) {
    var el = document.querySelector(selector);
    if (el && !el.disabled) { el.click(); return true; }
    return false;
  }

  function moveRow(step) {
    var rows = Array.prototype.slice.call(document.querySelectorAll("table.queue tbody tr"));
    if (!rows.length) return;
    var current = rows.findIndex(function (r) { return r.classList.contains("selected"); });
    var next = Math.max(0, Math.min(rows.length - 1, current + step));
    rows.forEach(function (r) { r.classList.remove("selected"); });
    rows[next].classList.add("selected");
    rows[next].scrollIntoView({ block: "nearest" });
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    var target = event.target;
    var typing = target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT");
    if (typing) {
      if (event.key === "Escape") target.blur();
      return;
    }
    var help = document.getElementById("keys-help");
    if (event.key === "?") {
      if (help) { help.open ? help.close() : help.showModal(); }
      event.preventDefault();
      return;
    }
    if (help && help.open) return;
    var panel = document.getElementById("flag-panel");
    if (panel) {
      var map = { y: "[data-key=y]", n: "[data-key=n]", s: "[data-key=s]", u: "[data-key=u]", j: "[data-key=j]" };
      if (map[event.key]) {
        if (click("#flag-panel " + map[event.key])) event.preventDefault();
      } else if (event.key === "f") {  // the family a wrong variant belongs to (Enter confirms with it)
        var fix = document.querySelector("#flag-panel input[name=suggested_family]");
        if (fix) { fix.focus(); event.preventDefault(); }
      } else if (event.key === "k") {
        history.back();
      } else if (event.key === "h") {
        heatmapOn(!document.body.classList.contains("heat-on"));
      } else if (event.key === "/") {
        var note = panel.querySelector("input[name=note]");
        if (note) { note.focus(); event.preventDefault(); }
      }
      return;
    }
    if (document.querySelector("table.queue")) {
      if (event.key === "j") { moveRow(1); event.preventDefault(); }
      else if (event.key === "k") { moveRow(-1); event.preventDefault(); }
      else if (event.key === "Enter") {
        var row = document.querySelector("table.queue tbody tr.selected");
        if (row) { window.location.href = row.dataset.href; } else { click("#start-review"); }
        event.preventDefault();
      }
    } else if (event.key === "Enter" && document.getElementById("start-review")) {
      click("#start-review");
    }
  });

  document.addEventListener("click", function (event) {
    var toggle = event.target.closest && event.target.closest("[data-toggle-heat]");
    if (toggle) heatmapOn(!document.body.classList.contains("heat-on"));
  });

  document.addEventListener("DOMContentLoaded", function () {
    stampForms(document);
    try { heatmapOn(localStorage.getItem("catalog-review-heat") === "1"); } catch (e) { /* private mode */ }
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    stampForms(event.detail.target.parentNode || document);
    var panel = document.getElementById("flag-panel");
    if (panel) {
      var heading = panel.querySelector("h1");
      if (heading) document.title = heading.textContent.trim().replace(/\s+/g, " ") + " · Catalog Review";
    }
  });
})();
