/* headatlas report: draws the heatmaps and bar charts from the inline JSON
 * (<script type="application/json" id="report-data">), shows a tooltip on hover,
 * and sorts tables when a header is clicked. No dependencies, no network.
 * Each drawn figure hides its static PNG fallback (class "drawn" on .figure). */
(function () {
  "use strict";

  var dataEl = document.getElementById("report-data");
  var DATA = dataEl ? JSON.parse(dataEl.textContent) : {};
  var HEATMAPS = DATA.heatmaps || {};
  var BARS = DATA.bars || {};

  // matplotlib's viridis and RdBu_r, sampled: the static PNGs use the same maps
  var VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"];
  var RDBU_R = ["#053061", "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7", "#fddbc7", "#f4a582", "#d6604d", "#b2182b", "#67001f"];
  var SERIES_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];

  function hexToRgb(hex) {
    return [parseInt(hex.slice(1, 3), 16), parseInt(hex.slice(3, 5), 16), parseInt(hex.slice(5, 7), 16)];
  }

  function interpolate(stops, t) {
    t = Math.max(0, Math.min(1, t));
    var x = t * (stops.length - 1), i = Math.min(Math.floor(x), stops.length - 2), f = x - i;
    var a = hexToRgb(stops[i]), b = hexToRgb(stops[i + 1]);
    var rgb = [0, 1, 2].map(function (k) { return Math.round(a[k] + (b[k] - a[k]) * f); });
    return "rgb(" + rgb.join(",") + ")";
  }

  function colorOf(spec, v) {
    if (v === null || v === undefined) { return "transparent"; }
    if (spec.diverging) {
      var bound = Math.max(Math.abs(spec.vmin), Math.abs(spec.vmax)) || 1;
      return interpolate(RDBU_R, (v / bound + 1) / 2);
    }
    var span = spec.vmax - spec.vmin || 1;
    return interpolate(VIRIDIS, (v - spec.vmin) / span);
  }

  function fmt(v) {
    if (v === null || v === undefined || isNaN(v)) { return "—"; }
    return Math.abs(v) >= 1000 ? v.toFixed(0) : v.toFixed(4);
  }

  // ---- tooltip ----------------------------------------------------------------------------
  var tip = document.createElement("div");
  tip.id = "tooltip";
  tip.setAttribute("role", "tooltip");
  document.body.appendChild(tip);

  function showTip(evt, text) {
    tip.textContent = text;
    tip.style.display = "block";
    var x = evt.clientX + 14, y = evt.clientY + 14;
    var w = tip.offsetWidth, h = tip.offsetHeight;
    if (x + w > window.innerWidth - 4) { x = evt.clientX - w - 10; }
    if (y + h > window.innerHeight - 4) { y = evt.clientY - h - 10; }
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }

  function hideTip() { tip.style.display = "none"; }

  // ---- heatmaps ----------------------------------------------------------------------------
  function labelStep(n) { return Math.max(1, Math.ceil(n / 32)); }

  function drawHeatmap(el, spec) {
    var nRows = spec.rows.length, nCols = spec.cols.length;
    var cellW = Math.max(6, Math.min(40, Math.floor(760 / Math.max(1, nCols))));
    var cellH = Math.max(6, Math.min(26, Math.floor(480 / Math.max(1, nRows))));
    var outline = {};
    (spec.outline || []).forEach(function (rc) { outline[rc[0] + ":" + rc[1]] = true; });

    var grid = document.createElement("div");
    grid.className = "hm-grid";
    grid.setAttribute("role", "img");
    grid.setAttribute("aria-label", spec.title || "heatmap");
    grid.style.gridTemplateColumns = "auto repeat(" + nCols + ", " + cellW + "px)";
    grid.style.gridAutoRows = cellH + "px";

    var frag = document.createDocumentFragment();
    var corner = document.createElement("div");
    corner.className = "hm-corner";
    corner.textContent = spec.rowName + " \\ " + spec.colName;
    frag.appendChild(corner);
    var cStep = labelStep(nCols), rStep = labelStep(nRows);
    spec.cols.forEach(function (label, c) {
      var d = document.createElement("div");
      d.className = "hm-col-label";
      d.textContent = c % cStep === 0 ? label : "";
      frag.appendChild(d);
    });
    spec.values.forEach(function (row, r) {
      var rl = document.createElement("div");
      rl.className = "hm-row-label";
      rl.textContent = r % rStep === 0 ? spec.rows[r] : "";
      frag.appendChild(rl);
      row.forEach(function (v, c) {
        var cell = document.createElement("div");
        cell.className = "cell" + (outline[r + ":" + c] ? " top" : "") + (v === null ? " empty" : "");
        cell.setAttribute("data-" + spec.rowKey, spec.rowValues[r]);
        cell.setAttribute("data-" + spec.colKey, spec.colValues[c]);
        cell.setAttribute("data-score", v === null ? "" : v);
        cell.setAttribute("data-r", r);
        cell.setAttribute("data-c", c);
        cell.style.background = colorOf(spec, v);
        frag.appendChild(cell);
      });
    });
    grid.appendChild(frag);
    grid.addEventListener("mousemove", function (evt) {
      var cell = evt.target.closest ? evt.target.closest(".cell") : null;
      if (!cell) { hideTip(); return; }
      var r = +cell.getAttribute("data-r"), c = +cell.getAttribute("data-c");
      showTip(evt, spec.rowName + " " + spec.rows[r] + " · " + spec.colName + " " + spec.cols[c] +
        " · " + spec.valueName + " " + fmt(spec.values[r][c]));
    });
    grid.addEventListener("mouseleave", hideTip);
    el.appendChild(grid);
    el.appendChild(legend(spec));
  }

  function legend(spec) {
    var box = document.createElement("div");
    box.className = "hm-legend";
    var lo = spec.diverging ? -Math.max(Math.abs(spec.vmin), Math.abs(spec.vmax)) : spec.vmin;
    var hi = spec.diverging ? -lo : spec.vmax;
    var stops = spec.diverging ? RDBU_R : VIRIDIS;
    var bar = document.createElement("span");
    bar.className = "hm-legend-bar";
    bar.style.background = "linear-gradient(to right, " + stops.join(", ") + ")";
    var a = document.createElement("span"), b = document.createElement("span");
    a.textContent = fmt(lo);
    b.textContent = fmt(hi) + " " + spec.valueName;
    box.appendChild(a);
    box.appendChild(bar);
    box.appendChild(b);
    return box;
  }

  // ---- bar charts (SVG markup: the HTML parser puts <svg> in the SVG namespace) ---------------
  function esc(text) {
    return String(text).replace(/[&<>"]/g, function (ch) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[ch];
    });
  }

  function drawBars(el, spec) {
    var cats = spec.categories, series = spec.series;
    var all = [0];
    series.forEach(function (s) { s.values.forEach(function (v) { if (v !== null) { all.push(v); } }); });
    var vmax = Math.max.apply(null, all), vmin = Math.min.apply(null, all);
    if (vmax === vmin) { vmax = vmin + 1; }
    var groupW = Math.max(14, Math.min(90, Math.floor(720 / Math.max(1, cats.length))));
    var longest = Math.max.apply(null, cats.map(function (c) { return String(c).length; }));
    var rotate = longest * 6.5 > groupW * labelStep(cats.length);  // labels would overlap: slant them
    var left = 44, right = 10, top = 18, bottom = rotate ? 24 + Math.min(longest, 24) * 5 : 34;
    var width = left + right + groupW * cats.length, height = 156 + bottom;
    var plotH = height - top - bottom;
    var y = function (v) { return top + (vmax - v) / (vmax - vmin) * plotH; };
    var barW = (groupW * 0.8) / Math.max(1, series.length);
    var step = labelStep(cats.length);
    var parts = ['<svg class="bars" width="' + width + '" height="' + height + '" viewBox="0 0 ' + width + " " + height + '">'];
    parts.push('<line x1="' + left + '" x2="' + (width - right) + '" y1="' + y(0) + '" y2="' + y(0) + '" stroke="#333"></line>');
    cats.forEach(function (cat, i) {
      series.forEach(function (s, j) {
        var v = s.values[i];
        if (v === null) { return; }
        var x = left + i * groupW + groupW * 0.1 + j * barW;
        parts.push('<rect class="bar" x="' + x + '" width="' + Math.max(1, barW - 1) + '" y="' + Math.min(y(v), y(0)) +
          '" height="' + Math.max(0.5, Math.abs(y(v) - y(0))) + '" fill="' + SERIES_COLORS[j % SERIES_COLORS.length] +
          '" data-i="' + i + '" data-j="' + j + '" data-value="' + v + '"></rect>');
      });
      if (i % step === 0) {
        var tx = left + i * groupW + groupW / 2, ty = height - bottom + 13;
        parts.push('<text class="tick" text-anchor="' + (rotate ? "end" : "middle") + '" x="' + tx + '" y="' + ty + '"' +
          (rotate ? ' transform="rotate(-35 ' + tx + " " + ty + ')"' : "") + ">" + esc(cat) + "</text>");
      }
    });
    [vmin, vmax].forEach(function (v) {
      parts.push('<text class="tick" text-anchor="end" x="' + (left - 4) + '" y="' + (y(v) + 4) + '">' +
        (Number.isInteger(v) ? v : v.toFixed(2)) + "</text>");
    });
    parts.push('<text class="axis" text-anchor="middle" x="' + (left + (width - left - right) / 2) + '" y="' + (height - 4) +
      '">' + esc(spec.xName) + "</text>");
    parts.push('<text class="axis" x="4" y="' + (top - 6) + '">' + esc(spec.yName) + "</text></svg>");
    var holder = document.createElement("div");
    holder.className = "bars-holder";
    holder.innerHTML = parts.join("");
    holder.addEventListener("mousemove", function (evt) {
      var bar = evt.target.closest ? evt.target.closest(".bar") : null;
      if (!bar) { hideTip(); return; }
      var i = +bar.getAttribute("data-i"), s = series[+bar.getAttribute("data-j")], v = s.values[i];
      showTip(evt, spec.xName + " " + cats[i] + " · " + s.name + ": " + (Number.isInteger(v) ? v : fmt(v)));
    });
    holder.addEventListener("mouseleave", hideTip);
    el.appendChild(holder);
    if (series.length > 1) {
      var lg = document.createElement("div");
      lg.className = "bar-legend";
      series.forEach(function (s, j) {
        var item = document.createElement("span");
        var sw = document.createElement("i");
        sw.style.background = SERIES_COLORS[j % SERIES_COLORS.length];
        item.appendChild(sw);
        item.appendChild(document.createTextNode(s.name));
        lg.appendChild(item);
      });
      el.appendChild(lg);
    }
  }

  function drawAll(selector, attr, specs, draw) {
    document.querySelectorAll(selector).forEach(function (el) {
      var spec = specs[el.getAttribute(attr)];
      if (!spec) { return; }
      try {
        draw(el, spec);
        var fig = el.closest(".figure");
        if (fig) { fig.classList.add("drawn"); }
      } catch (err) {  // keep the static figure visible
        el.textContent = "";
        if (window.console) { console.error(err); }
      }
    });
  }

  // ---- sortable tables ----------------------------------------------------------------------
  function cellKey(cell, numeric) {
    var raw = cell.hasAttribute("data-value") ? cell.getAttribute("data-value") : cell.textContent.trim();
    if (!numeric) { return raw.toLowerCase(); }
    var v = parseFloat(raw);
    return isNaN(v) ? null : v;
  }

  function sortTable(table, idx, th) {
    var numeric = th.getAttribute("data-type") === "num";
    var asc = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(th.parentNode.cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var ka = cellKey(a.cells[idx], numeric), kb = cellKey(b.cells[idx], numeric);
      if (ka === null && kb === null) { return a._order - b._order; }
      if (ka === null) { return 1; }  // blanks last in both directions
      if (kb === null) { return -1; }
      var d = ka < kb ? -1 : ka > kb ? 1 : 0;
      return (asc ? d : -d) || a._order - b._order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }

  function makeSortable(table) {
    if (!table.tHead || !table.tBodies.length) { return; }
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row, i) { row._order = i; });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, idx) {
      th.tabIndex = 0;
      th.title = "click to sort";
      th.addEventListener("click", function () { sortTable(table, idx, th); });
      th.addEventListener("keydown", function (evt) {
        if (evt.key === "Enter" || evt.key === " ") { evt.preventDefault(); sortTable(table, idx, th); }
      });
    });
  }

  drawAll("[data-heatmap]", "data-heatmap", HEATMAPS, drawHeatmap);
  drawAll("[data-bars]", "data-bars", BARS, drawBars);
  document.querySelectorAll("table.sortable").forEach(makeSortable);
  document.documentElement.classList.add("js-ready");
})();
