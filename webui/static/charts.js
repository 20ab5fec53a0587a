// Dashboard charts: each <canvas data-chart="{...}"> becomes a Chart.js chart. The JSON comes
// from the server in an (escaped) attribute; labels are drawn on the canvas, never as HTML.
(function () {
  "use strict";
  var charts = new Map();
  var LABEL_CHARS = 28;
  var LEGEND_CHARS = 60;
  var ROW_PX = 26;  // a horizontal chart grows with its bars, so each keeps its label

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
      // below $1 two significant digits, so axis ticks such as $0.015 and $0.02 stay apart
      if (Math.abs(v) < 1) return "$" + String(parseFloat(v.toPrecision(2)));
      return "$" + v.toLocaleString("en-US", {minimumFractionDigits: 2, maximumFractionDigits: 2});
    }
    if (unit === "ms") {
      // under 10 ms one decimal, so ticks such as 0.5 ms and 1.5 ms do not both read "1 ms"
      if (Math.abs(v) < 10) return String(parseFloat(v.toFixed(1))) + " ms";
      return v < 1000 ? Math.round(v) + " ms" : (v / 1000).toFixed(1) + " s";
    }
    if (unit === "percent") return String(parseFloat((v * 100).toFixed(v < 0.1 ? 1 : 0))) + "%";
    if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1).replace(/\.0$/, "") + "M";
    if (Math.abs(v) >= 1e3) return (v / 1e3).toFixed(1).replace(/\.0$/, "") + "k";
    return String(Math.round(v * 100) / 100);
  }

  // Long names keep their start and their end, where names that share a prefix differ.
  function shorten(label, chars) {
    var text = String(label), most = chars || LABEL_CHARS;
    if (text.length <= most) return text;
    var tail = Math.floor(most / 2) - 1;
    return text.slice(0, most - tail - 1) + "…" + text.slice(-tail);
  }

  // Legend entries are names the callers chose (metrics, agents, models, variants): cut like
  // the axis labels, or a long one runs off both sides of the canvas (the tooltip has it whole).
  function legendLabels(chart) {
    return Chart.defaults.plugins.legend.labels.generateLabels(chart).map(function (item) {
      item.text = shorten(item.text, LEGEND_CHARS);
      return item;
    });
  }

  // A scatter (an experiment's cost against a score): one coloured point per variant.
  function scatter(spec) {
    var colors = palette();
    var datasets = spec.datasets.map(function (d, i) {
      var color = colors.series[i % colors.series.length];
      return {label: d.label, data: d.data, backgroundColor: color, borderColor: color,
              pointRadius: 7, pointHoverRadius: 9};
    });
    function axis(unit, title) {
      return {type: "linear", grace: "10%", grid: {color: colors.grid},
              title: {display: true, text: title, color: colors.text},
              ticks: {color: colors.text, callback: function (v) { return format(unit, v); }}};
    }
    return {
      type: "scatter",
      data: {datasets: datasets},
      options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        scales: {x: axis("usd", "cost"), y: axis("", spec.y_label || "score")},
        plugins: {
          legend: {display: true,
                   labels: {color: colors.text, boxWidth: 12, generateLabels: legendLabels}},
          tooltip: {callbacks: {label: function (ctx) {
            return " " + ctx.dataset.label + ": " + format("usd", ctx.parsed.x) + ", " +
                   (spec.y_label || "score") + " " + format("", ctx.parsed.y);
          }}}
        }
      }
    };
  }

  function config(spec) {
    if (spec.type === "scatter") return scatter(spec);
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
    // A category per bar (models, runs, agents) is always labelled, cut to fit (the tooltip
    // has it whole); a time axis may skip labels.
    var labelAxis = {stacked: !!spec.stacked, grid: {display: false},
                     ticks: {color: colors.text, autoSkip: !horizontal, maxRotation: 0}};
    if (horizontal) {
      labelAxis.ticks.callback = function (value) { return shorten(this.getLabelForValue(value)); };
    }
    return {
      type: spec.type,
      data: {labels: spec.labels, datasets: datasets},
      options: {
        indexAxis: horizontal ? "y" : "x", responsive: true, maintainAspectRatio: false,
        animation: false, interaction: {mode: "index", intersect: false},
        scales: horizontal ? {x: valueAxis, y: labelAxis} : {x: labelAxis, y: valueAxis},
        plugins: {
          legend: {display: datasets.length > 1,
                   labels: {color: colors.text, boxWidth: 12, generateLabels: legendLabels}},
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
        var spec = JSON.parse(canvas.dataset.chart);
        if (spec.horizontal && canvas.parentElement) {
          var bars = spec.labels.length * Math.max(1, spec.datasets.length);
          canvas.parentElement.style.height = Math.max(220, bars * ROW_PX / 1.5 + 48) + "px";
        }
        charts.set(canvas, new window.Chart(canvas, config(spec)));
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
  // The whole document: an outerHTML swap's target is the element it replaced (charts
  // already drawn are skipped).
  document.addEventListener("htmx:afterSettle", function () { draw(document); });
  document.addEventListener("agentops:theme", redrawAll);
})();
