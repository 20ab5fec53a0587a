// Dashboard charts: each <canvas data-chart="{...}"> becomes a Chart.js chart. The JSON comes
// from the server in an (escaped) attribute; labels are drawn on the canvas, never as HTML.
(function () {
  "use strict";
  var charts = new Map();

  function css(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function palette() {
    return {
      text: css("--muted"), grid: css("--line"),
      series: [css("--chart-1"), css("--chart-2"), css("--chart-3"), css("--chart-4")],
      error: css("--bad"), warn: css("--warn")
    };
  }

  function format(unit, value) {
    if (value === null || value === undefined || isNaN(value)) return "–";
    var v = Number(value);
    if (unit === "usd") {
      if (v === 0) return "$0";
      if (Math.abs(v) < 0.01) return "$" + String(parseFloat(v.toPrecision(2)));
      return "$" + v.toLocaleString("en-US", {minimumFractionDigits: 2, maximumFractionDigits: 2});
    }
    if (unit === "ms") return v < 1000 ? Math.round(v) + " ms" : (v / 1000).toFixed(1) + " s";
    if (unit === "percent") return (v * 100).toFixed(v < 0.1 ? 1 : 0) + "%";
    if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1).replace(/\.0$/, "") + "M";
    if (Math.abs(v) >= 1e3) return (v / 1e3).toFixed(1).replace(/\.0$/, "") + "k";
    return String(Math.round(v * 100) / 100);
  }

  function config(spec) {
    var colors = palette();
    var horizontal = !!spec.horizontal;
    var datasets = spec.datasets.map(function (d, i) {
      var color = d.tone === "error" ? colors.error : d.tone === "warn" ? colors.warn
                                     : colors.series[i % colors.series.length];
      return {
        label: d.label, data: d.data, backgroundColor: color, borderColor: color,
        borderWidth: spec.type === "line" ? 2 : 0, pointRadius: spec.type === "line" ? 2 : undefined,
        tension: 0.25, spanGaps: true, maxBarThickness: 28, borderRadius: 2
      };
    });
    var valueAxis = {
      beginAtZero: true, stacked: !!spec.stacked, grid: {color: colors.grid},
      ticks: {color: colors.text, callback: function (v) { return format(spec.unit, v); }}
    };
    var labelAxis = {stacked: !!spec.stacked, grid: {display: false},
                     ticks: {color: colors.text, autoSkip: true, maxRotation: 0}};
    return {
      type: spec.type,
      data: {labels: spec.labels, datasets: datasets},
      options: {
        indexAxis: horizontal ? "y" : "x", responsive: true, maintainAspectRatio: false,
        animation: false, interaction: {mode: "index", intersect: false},
        scales: horizontal ? {x: valueAxis, y: labelAxis} : {x: labelAxis, y: valueAxis},
        plugins: {
          legend: {display: datasets.length > 1, labels: {color: colors.text, boxWidth: 12}},
          tooltip: {callbacks: {label: function (ctx) {
            var raw = horizontal ? ctx.parsed.x : ctx.parsed.y;
            return " " + ctx.dataset.label + ": " + format(spec.unit, raw);
          }}}
        }
      }
    };
  }

  function draw(root) {
    if (!window.Chart) return;
    (root || document).querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      if (charts.has(canvas)) return;
      try {
        charts.set(canvas, new window.Chart(canvas, config(JSON.parse(canvas.dataset.chart))));
      } catch (e) {
        canvas.insertAdjacentText("afterend", "This chart could not be drawn.");
      }
    });
  }

  function forget(root) {
    charts.forEach(function (chart, canvas) {
      if (!document.contains(canvas) || (root && root.contains(canvas))) {
        chart.destroy();
        charts.delete(canvas);
      }
    });
  }

  function redrawAll() {
    forget(document.body);
    draw(document);
  }

  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  document.addEventListener("htmx:beforeSwap", function (e) { forget(e.detail.target); });
  document.addEventListener("htmx:afterSettle", function (e) { draw(e.detail.target); });
  document.addEventListener("agentops:theme", redrawAll);
})();
