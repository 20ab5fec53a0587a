// AgentOps Studio UI behaviour: theme switch, live "3 min ago" times, keyboard shortcuts.
// Loaded from /static under a strict CSP: no inline code, no eval.
(function () {
  "use strict";

  // -- theme ---------------------------------------------------------------------------
  function currentTheme() {
    var set = document.documentElement.getAttribute("data-theme");
    if (set) return set;
    return window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }

  function toggleTheme() {
    var next = currentTheme() === "dark" ? "light" : "dark";
    document.documentElement.setAttribute("data-theme", next);
    try { localStorage.setItem("agentops-theme", next); } catch (e) { /* ignore */ }
    var button = document.getElementById("theme-toggle");
    if (button) button.setAttribute("aria-pressed", String(next === "dark"));
    document.dispatchEvent(new CustomEvent("agentops:theme"));
  }

  // -- relative times -------------------------------------------------------------------
  function ago(seconds, at) {
    if (seconds < 0) return "in the future";
    if (seconds < 5) return "just now";
    if (seconds < 60) return Math.floor(seconds) + " s ago";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min ago";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h ago";
    var days = Math.floor(seconds / 86400);
    if (days < 30) return days === 1 ? "1 day ago" : days + " days ago";
    return at.toISOString().slice(0, 10);
  }

  function refreshTimes() {
    var now = Date.now();
    document.querySelectorAll("time[data-ago]").forEach(function (el) {
      var at = new Date(el.getAttribute("datetime"));
      if (!isNaN(at)) el.textContent = ago((now - at.getTime()) / 1000, at);
    });
  }

  // -- keyboard -------------------------------------------------------------------------
  function typing(target) {
    return target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
  }

  function moveRow(step) {
    var links = Array.prototype.slice.call(document.querySelectorAll("a.rowlink"));
    if (!links.length) return;
    var index = links.indexOf(document.activeElement);
    var next = index < 0 ? (step > 0 ? 0 : links.length - 1)
                         : Math.min(links.length - 1, Math.max(0, index + step));
    links[next].focus();
    links[next].closest("tr").scrollIntoView({block: "nearest"});
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    if (event.key === "/") {
      var search = document.querySelector("input[type=search]");
      if (search) { event.preventDefault(); search.focus(); search.select(); }
    } else if (event.key === "j") {
      moveRow(1);
    } else if (event.key === "k") {
      moveRow(-1);
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    var button = document.getElementById("theme-toggle");
    if (button) {
      button.setAttribute("aria-pressed", String(currentTheme() === "dark"));
      button.addEventListener("click", toggleTheme);
    }
    setInterval(refreshTimes, 15000);
  });
  document.addEventListener("htmx:afterSettle", refreshTimes);

  // -- "show all": once the whole text is in, its button has done its job ------------------
  document.addEventListener("htmx:afterSwap", function (event) {
    var source = event.detail && event.detail.requestConfig && event.detail.requestConfig.elt;
    if (source && source.closest && source.closest(".show-all") && event.detail.successful) {
      source.closest(".show-all").remove();
    }
  });
})();
