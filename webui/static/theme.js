// Apply the saved light/dark choice before the page paints (loaded without defer, tiny).
(function () {
  try {
    var saved = localStorage.getItem("agentops-theme");
    if (saved === "light" || saved === "dark") {
      document.documentElement.setAttribute("data-theme", saved);
    }
  } catch (e) { /* storage disabled: follow the system theme */ }
})();
