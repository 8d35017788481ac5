/* Tiny dependency-free SVG charts for the billing dashboards.
 *
 * Markup (templates/billing/dashboard_chart.html):
 *   <figure class="chart" data-chart="ID" data-summary="One sentence for screen readers">
 *     <div class="chart-canvas">…fallback text…</div>
 *     <script type="application/json" id="ID">{"kind": "bar"|"line", "labels": [...],
 *       "series": [{"name": "Units", "values": [...]}], "format": "int"|"money"|"percent", "currency": "usd"}</script>
 *   </figure>
 * The SVG gets role="img" and the summary as its accessible name; each bar and point has a <title> tooltip.
 * The data table beside it (a <details>) is the fallback without JavaScript.
 */
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#3b5bdb", "#e67700", "#2b8a3e", "#c2255c", "#5f3dc4", "#0b7285"];
  var W = 640, H = 240, LEFT = 64, RIGHT = 12, TOP = 14, BOTTOM = 30;

  function el(name, attrs, parent, text) {
    var node = document.createElementNS(NS, name);
    for (var key in attrs) {
      if (Object.prototype.hasOwnProperty.call(attrs, key)) node.setAttribute(key, attrs[key]);
    }
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function formatter(data, compact) {
    if (data.format === "money") {
      var money;
      try {
        money = new Intl.NumberFormat("en-US", {
          style: "currency", currency: (data.currency || "usd").toUpperCase(),
          notation: compact ? "compact" : "standard", maximumFractionDigits: compact ? 1 : 2
        });
      } catch (e) {
        money = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2 });
      }
      return function (v) { return money.format(v); };
    }
    if (data.format === "percent") return function (v) { return v.toFixed(1) + "%"; };
    var number = new Intl.NumberFormat("en-US", { notation: compact ? "compact" : "standard", maximumFractionDigits: compact ? 1 : 0 });
    return function (v) { return number.format(v); };
  }

  // The smallest "nice" number (1, 2, 2.5, 5 × 10^k) at or above v.
  function niceCeil(v) {
    if (!(v > 0)) return 1;
    var power = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) {
      if (steps[i] * power >= v) return steps[i] * power;
    }
    return 10 * power;
  }

  function draw(figure) {
    var source = document.getElementById(figure.getAttribute("data-chart"));
    var canvas = figure.querySelector(".chart-canvas");
    if (!source || !canvas) return;
    var data;
    try { data = JSON.parse(source.textContent); } catch (e) { return; }
    var labels = data.labels || [], series = data.series || [];
    var n = labels.length;
    if (!n || !series.length) return;
    var full = formatter(data, false), short = formatter(data, true);
    var max = 0;
    series.forEach(function (s) { s.values.forEach(function (v) { if (v > max) max = v; }); });
    // Four grid steps of a "nice" size; whole numbers for counts.
    var step = niceCeil(max / 4);
    if (data.format !== "money" && data.format !== "percent") step = Math.max(1, Math.ceil(step));
    var top = step * 4;
    var plotW = W - LEFT - RIGHT, plotH = H - TOP - BOTTOM;
    var y = function (v) { return TOP + plotH - (v / top) * plotH; };
    var band = plotW / n;
    var x = function (i) { return LEFT + band * (i + 0.5); };

    var svg = el("svg", {
      viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": figure.getAttribute("data-summary") || "",
      preserveAspectRatio: "xMidYMid meet", "class": "chart-svg"
    });
    var grid = el("g", { "class": "chart-grid", "aria-hidden": "true" }, svg);
    for (var t = 0; t <= 4; t++) {
      var value = step * t, gy = y(value);
      el("line", { x1: LEFT, x2: W - RIGHT, y1: gy, y2: gy }, grid);
      el("text", { x: LEFT - 6, y: gy, "text-anchor": "end", "dominant-baseline": "middle" }, grid, short(value));
    }
    var every = Math.max(1, Math.ceil(n / 8));
    for (var i = 0; i < n; i++) {
      if (i % every === 0) {
        el("text", { x: x(i), y: H - 10, "text-anchor": "middle" }, grid, labels[i]);
      }
    }

    if (data.kind === "line") {
      series.forEach(function (s, k) {
        var color = COLORS[k % COLORS.length];
        var points = s.values.map(function (v, j) { return x(j).toFixed(1) + "," + y(v).toFixed(1); }).join(" ");
        el("polyline", { points: points, fill: "none", stroke: color, "stroke-width": 2, "stroke-linejoin": "round" }, svg);
        var dots = el("g", { fill: color }, svg);
        s.values.forEach(function (v, j) {
          var dot = el("circle", { cx: x(j), cy: y(v), r: n > 40 ? 2 : 3.5 }, dots);
          el("title", {}, dot, labels[j] + " · " + s.name + ": " + full(v));
        });
      });
    } else {
      var groupW = band * 0.8, barW = groupW / series.length;
      series.forEach(function (s, k) {
        var color = COLORS[k % COLORS.length];
        var bars = el("g", { fill: color }, svg);
        s.values.forEach(function (v, j) {
          var bx = LEFT + band * j + (band - groupW) / 2 + barW * k;
          var by = y(v), bh = TOP + plotH - by;
          var bar = el("rect", { x: bx.toFixed(1), y: by.toFixed(1), width: Math.max(1, barW - 1).toFixed(1), height: Math.max(v > 0 ? 1 : 0, bh).toFixed(1), rx: 1.5 }, bars);
          el("title", {}, bar, labels[j] + " · " + s.name + ": " + full(v));
        });
      });
    }
    el("line", { x1: LEFT, x2: W - RIGHT, y1: TOP + plotH, y2: TOP + plotH, "class": "chart-axis" }, svg);

    canvas.textContent = "";
    canvas.appendChild(svg);
    if (series.length > 1) {
      var legend = document.createElement("ul");
      legend.className = "chart-legend";
      legend.setAttribute("aria-hidden", "true");
      series.forEach(function (s, k) {
        var item = document.createElement("li");
        var swatch = document.createElement("span");
        swatch.className = "chart-swatch";
        swatch.style.background = COLORS[k % COLORS.length];
        item.appendChild(swatch);
        item.appendChild(document.createTextNode(s.name));
        legend.appendChild(item);
      });
      canvas.appendChild(legend);
    }
    figure.classList.add("chart-ready");
  }

  function drawAll() {
    var figures = document.querySelectorAll("figure.chart[data-chart]");
    for (var i = 0; i < figures.length; i++) draw(figures[i]);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", drawAll);
  else drawAll();
})();
