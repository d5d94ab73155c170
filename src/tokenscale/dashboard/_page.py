# ruff: noqa: E501 - the page's embedded JavaScript keeps its own line lengths
"""The dashboard page: one self-contained HTML document (inline CSS and JS, SVG charts, no CDN)."""

from __future__ import annotations

import base64
import hashlib
from typing import Final

__all__ = ["CONTENT_SECURITY_POLICY", "PAGE_HTML"]

_CSS: Final = """
:root {
  --bg: #f4f6fb; --card: #ffffff; --ink: #1b2233; --muted: #6b7489; --line: #e3e7f0;
  --accent: #4f6bff; --accent-soft: #e8ecff; --ok: #1f9d6b; --warn: #d9822b; --bad: #d64545;
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.45 "Liberation Sans", "Helvetica Neue", Arial, sans-serif; }
header { display: flex; align-items: center; gap: 16px; padding: 14px 28px;
  background: #161c2d; color: #fff; }
header .brand { font-size: 20px; font-weight: 700; letter-spacing: .2px; }
header .brand span { color: #8ea2ff; }
header .tagline { color: #aab3c8; font-size: 13px; }
header .controls { margin-left: auto; display: flex; gap: 10px; align-items: center; }
header label { color: #aab3c8; font-size: 12px; }
select, button, input { font: inherit; border-radius: 8px; border: 1px solid #39425a;
  background: #232b40; color: #fff; padding: 6px 10px; }
button { cursor: pointer; }
main { padding: 20px 28px 32px; display: grid; gap: 18px; }
.kpis { display: grid; grid-template-columns: repeat(5, minmax(0, 1fr)); gap: 14px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 12px; padding: 16px 18px;
  box-shadow: 0 1px 2px rgba(20, 30, 60, .04); min-width: 0; }
.kpi .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .6px; }
.kpi .value { font-size: 26px; font-weight: 700; margin-top: 4px; }
.kpi .sub { color: var(--muted); font-size: 12px; margin-top: 2px; white-space: nowrap;
  overflow: hidden; text-overflow: ellipsis; }
.mix { display: flex; height: 6px; border-radius: 3px; overflow: hidden; margin-top: 8px;
  background: var(--line); }
.card h2 { font-size: 15px; margin: 0; }
.card .head { display: flex; align-items: center; gap: 12px; margin-bottom: 10px; }
.card .head .hint { color: var(--muted); font-size: 12px; }
.seg { margin-left: auto; display: inline-flex; border: 1px solid var(--line); border-radius: 8px;
  overflow: hidden; }
.seg button { background: #fff; color: var(--muted); border: 0; border-radius: 0; padding: 4px 12px; }
.seg button.on { background: var(--accent-soft); color: var(--accent); font-weight: 700; }
.seg + .seg { margin-left: 8px; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 16px; margin-top: 8px; font-size: 12px;
  color: var(--muted); }
.legend i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px;
  vertical-align: -1px; }
.grid2 { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 18px; }
.grid3 { display: grid; grid-template-columns: minmax(0, 1.2fr) minmax(0, 1fr) minmax(0, 1fr); gap: 18px; }
table { width: 100%; border-collapse: collapse; font-size: 13px; }
th { text-align: left; color: var(--muted); font-weight: 600; font-size: 11px; text-transform: uppercase;
  letter-spacing: .5px; border-bottom: 1px solid var(--line); padding: 6px 4px; }
td { border-bottom: 1px solid #f0f2f7; padding: 6px 4px; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; max-width: 220px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.bar { height: 6px; background: var(--accent-soft); border-radius: 3px; min-width: 60px; }
.bar > div { height: 6px; background: var(--accent); border-radius: 3px; }
.budget { margin: 10px 0 14px; }
.budget .row { display: flex; justify-content: space-between; font-size: 13px; }
.budget .meter { height: 10px; background: var(--line); border-radius: 5px; overflow: hidden;
  margin-top: 6px; }
.budget .meter > div { height: 10px; }
.muted { color: var(--muted); }
.empty { color: var(--muted); padding: 18px 0; text-align: center; }
.error { background: #fff1f1; border: 1px solid #f3c4c4; color: #8a1f1f; border-radius: 10px;
  padding: 12px 16px; }
footer { color: var(--muted); font-size: 12px; padding: 0 28px 24px; }
#auth { display: none; gap: 8px; align-items: center; }
svg text { font: 11px "Liberation Sans", Arial, sans-serif; fill: #6b7489; }
svg rect.day { cursor: pointer; }
button.link { background: none; border: 0; padding: 0; color: var(--accent); cursor: pointer;
  text-align: left; max-width: 100%; overflow: hidden; text-overflow: ellipsis; }
button.link:hover, button.link:focus { text-decoration: underline; }
.filters { display: flex; flex-wrap: wrap; gap: 8px; align-items: end; margin-bottom: 10px; }
.filters label { display: flex; flex-direction: column; font-size: 11px; color: var(--muted); gap: 2px; }
.filters input, main .seg button.plain, .actions button { background: #fff; color: var(--ink);
  border: 1px solid var(--line); }
.actions { display: flex; gap: 8px; margin-left: auto; }
th button.sort { background: none; border: 0; padding: 0; color: inherit; font: inherit;
  text-transform: inherit; letter-spacing: inherit; cursor: pointer; }
#explorer-table { max-height: 520px; overflow: auto; }
#explorer-table td { max-width: 180px; }
.range { display: flex; gap: 6px; align-items: center; }
.range input { width: 140px; }
"""

_BODY: Final = """
<header>
  <div class="brand">token<span>scale</span></div>
  <div class="tagline">AI usage ledger &middot; tokens and cost per tool, user and model</div>
  <div class="controls">
    <form id="auth"><input id="key" type="password" placeholder="API key (tsk_...)" size="22">
      <button type="submit">Use key</button></form>
    <label for="tenant">Tenant</label>
    <select id="tenant"><option value="">All tenants</option></select>
    <label for="days">Period</label>
    <select id="days">
      <option value="7">Last 7 days</option><option value="14">Last 14 days</option>
      <option value="30" selected>Last 30 days</option><option value="90">Last 90 days</option>
      <option value="365">Last 365 days</option>
    </select>
    <div class="range"><label for="range-from">From</label><input id="range-from" type="date">
      <label for="range-to">To</label><input id="range-to" type="date"></div>
    <button id="refresh" type="button" title="Reload" aria-label="Reload">&#x21bb;</button>
  </div>
</header>
<main>
  <div id="error" class="error" hidden></div>
  <section class="kpis">
    <div class="card kpi"><div class="label">Total tokens</div>
      <div class="value" id="kpi-tokens" data-value="">&ndash;</div>
      <div class="sub" id="kpi-tokens-sub">&nbsp;</div><div class="mix" id="kpi-mix"></div></div>
    <div class="card kpi"><div class="label">Cost (USD)</div>
      <div class="value" id="kpi-cost" data-value="">&ndash;</div>
      <div class="sub" id="kpi-cost-sub">&nbsp;</div></div>
    <div class="card kpi"><div class="label">Requests</div>
      <div class="value" id="kpi-requests" data-value="">&ndash;</div>
      <div class="sub" id="kpi-requests-sub">&nbsp;</div></div>
    <div class="card kpi"><div class="label">Active users</div>
      <div class="value" id="kpi-users" data-value="">&ndash;</div>
      <div class="sub" id="kpi-users-sub">&nbsp;</div></div>
    <div class="card kpi"><div class="label">Models</div>
      <div class="value" id="kpi-models" data-value="">&ndash;</div>
      <div class="sub" id="kpi-models-sub">&nbsp;</div></div>
  </section>
  <section class="card">
    <div class="head"><h2 id="chart-title">Daily tokens by tool</h2>
      <span class="hint" id="chart-hint"></span>
      <div class="seg" id="dim-seg"><button data-dim="tool" class="on">Tool</button><button
        data-dim="user">User</button><button data-dim="model">Model</button></div>
      <div class="seg" id="metric-seg"><button data-metric="tokens" class="on">Tokens</button><button
        data-metric="cost">Cost</button></div>
      <div class="seg" id="gran-seg"><button data-gran="day" class="on">Daily</button><button
        data-gran="hour">Hourly</button></div>
    </div>
    <div id="chart"></div>
    <div class="legend" id="legend"></div>
  </section>
  <section class="grid3">
    <div class="card"><div class="head"><h2>Top users</h2><span class="hint">by tokens</span></div>
      <div id="top-users"></div></div>
    <div class="card"><div class="head"><h2>By model</h2></div><div id="by-model"></div></div>
    <div class="card"><div class="head"><h2>By tool</h2></div><div id="by-tool"></div></div>
  </section>
  <section class="card" id="explorer" aria-labelledby="explorer-title">
    <div class="head"><h2 id="explorer-title">Requests</h2>
      <span class="hint" id="explorer-hint">click a user, model, tool or day to see its requests</span>
      <div class="seg" id="view-seg"><button data-view="requests" class="on">Requests</button><button
        data-view="session">Sessions</button><button data-view="conversation">Conversations</button></div>
    </div>
    <form class="filters" id="filters">
      <label>User<input name="user" id="f-user" size="18"></label>
      <label>Tool<input name="tool" id="f-tool" size="12"></label>
      <label>Model<input name="model" id="f-model" size="16"></label>
      <label>Session<input name="session" id="f-session" size="14"></label>
      <label>Conversation<input name="conversation" id="f-conversation" size="14"></label>
      <label>From<input name="since" id="f-since" type="date"></label>
      <label>To<input name="until" id="f-until" type="date"></label>
      <button type="submit" id="f-apply">Show</button>
      <button type="button" id="f-clear">Clear</button>
      <div class="actions"><button type="button" id="export-csv">Export CSV</button>
        <button type="button" id="export-json">Export JSON</button></div>
    </form>
    <div id="explorer-status" class="muted" aria-live="polite"></div>
    <div id="explorer-table"></div>
  </section>
  <section class="card" id="budgets-card">
    <div class="head"><h2>Budgets</h2>
      <span class="hint">rolling windows, tokens = input + cache + output</span></div>
    <div id="budgets"></div>
  </section>
  <section class="card" id="alerts-card">
    <div class="head"><h2>Budget alerts</h2>
      <span class="hint">thresholds crossed, and when each window runs out at its recent rate</span></div>
    <div id="forecasts"></div>
    <div id="alerts"></div>
  </section>
</main>
<footer id="footer">Reading tokenscale.usage_daily&hellip;</footer>
"""

_JS: Final = r"""
(function () {
  "use strict";
  var PALETTE = ["#4f6bff", "#1fb39a", "#f2a93b", "#e25563", "#8b5cf6", "#1ca4e4", "#f0763a",
                 "#7a8699", "#c0c6d4"];
  var MIX = [["input_tokens", "input", "#4f6bff"], ["cache_read_tokens", "cache read", "#1fb39a"],
             ["cache_write_tokens", "cache write", "#f2a93b"], ["output_tokens", "output", "#e25563"]];
  var SVGNS = "http://www.w3.org/2000/svg";
  var state = { dim: "tool", metric: "tokens", gran: "day", data: null, hourly: null,
                view: "requests", explorer: null, sort: "time", order: "desc" };
  var FILTER_NAMES = ["user", "tool", "model", "session", "conversation"];
  var NONE = "(none)";
  var params = new URLSearchParams(window.location.search);

  function $(id) { return document.getElementById(id); }
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    for (var k in attrs || {}) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "style") node.style.cssText = attrs[k];  // CSSOM: allowed by the page's CSP
      else node.setAttribute(k, attrs[k]);
    }
    (children || []).forEach(function (c) { node.appendChild(c); });
    return node;
  }
  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVGNS, tag);
    for (var k in attrs || {}) node.setAttribute(k, attrs[k]);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
  function full(n) { return Math.round(n).toLocaleString("en-US"); }
  function compact(n) {
    var a = Math.abs(n), units = [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "k"]];
    for (var i = 0; i < units.length; i++) {
      if (a >= units[i][0] * 0.9995) {
        var text = (n / units[i][0]).toPrecision(3);
        if (text.indexOf(".") >= 0) text = text.replace(/\.?0+$/, "");
        return text + units[i][1];
      }
    }
    return String(Math.round(n));
  }
  function usd(n, digits) {
    if (n === null || n === undefined) return "n/a";
    if (digits === undefined) digits = Math.abs(n) >= 100 ? 0 : 2;
    if (n > 0 && n < 0.01 && digits <= 2) return "<$0.01";
    return "$" + n.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }
  function shortDay(iso) {
    var d = new Date(iso + "T00:00:00Z");
    return d.toLocaleDateString("en-US", { month: "short", day: "numeric", timeZone: "UTC" });
  }
  function niceStep(v) {
    if (v <= 0) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v))), f = v / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * p;
  }

  function setKpi(id, value, shown, title) {
    var node = $(id);
    node.setAttribute("data-value", String(value));
    node.textContent = shown;
    if (title) node.title = title;
  }

  function renderKpis(d) {
    var t = d.totals;
    setKpi("kpi-tokens", t.total_tokens, compact(t.total_tokens), full(t.total_tokens) + " tokens");
    $("kpi-tokens-sub").textContent = full(t.total_tokens) + " in " + d.days + " days";
    var mix = clear($("kpi-mix"));
    MIX.forEach(function (m) {
      if (t[m[0]] > 0) {
        mix.appendChild(el("div", { style: "flex:" + t[m[0]] + ";background:" + m[2],
                                    title: m[1] + ": " + full(t[m[0]]) }));
      }
    });
    setKpi("kpi-cost", t.cost_usd === null ? "" : t.cost_usd, usd(t.cost_usd));
    $("kpi-cost-sub").textContent = t.unpriced_events ? t.unpriced_events + " unpriced events"
      : (t.requests ? usd(t.cost_usd / Math.max(1, t.requests), 4) + " per request" : "\u00a0");
    setKpi("kpi-requests", t.requests, compact(t.requests), full(t.requests) + " requests");
    $("kpi-requests-sub").textContent =
      t.requests ? compact(t.total_tokens / t.requests) + " tokens per request" : "\u00a0";
    setKpi("kpi-users", t.users, full(t.users));
    $("kpi-users-sub").textContent = t.tools + (t.tools === 1 ? " tool" : " tools");
    setKpi("kpi-models", t.models, full(t.models));
    $("kpi-models-sub").textContent = "reasoning " + compact(t.reasoning_tokens) + " of output";
  }

  function hourlySeries() {
    var h = state.hourly.hours;
    return {
      days: h.map(function (x) { return x.hour; }),
      series: [{ label: "all usage", tokens: h.map(function (x) { return x.total_tokens; }),
                 cost: h.map(function (x) { return x.cost_usd === null ? 0 : Number(x.cost_usd); }) }],
      count: 1
    };
  }

  function renderChart() {
    var d = state.data, dim = { tool: d.by_tool, user: d.by_user, model: d.by_model }[state.dim];
    var hourlyView = state.gran === "hour" && state.hourly;
    if (hourlyView) dim = hourlySeries();
    var metric = state.metric, days = hourlyView ? dim.days : d.day_list, series = dim.series;
    var names = { tool: "tool", user: "user", model: "model" };
    $("chart-title").textContent = hourlyView
      ? (metric === "tokens" ? "Hourly tokens" : "Hourly cost") + " (UTC)"
      : (metric === "tokens" ? "Daily tokens" : "Daily cost") + " by " + names[state.dim];
    $("chart-hint").textContent = hourlyView ? state.hourly.since.slice(0, 10) + " to " +
      lastDay(state.hourly) : dim.count + " " + names[state.dim] + (dim.count === 1 ? "" : "s");
    var box = clear($("chart")), legend = clear($("legend"));
    var W = Math.max(600, box.clientWidth || 1180), H = 270, m = { l: 62, r: 10, t: 12, b: 26 };
    var iw = W - m.l - m.r, ih = H - m.t - m.b;
    var totals = days.map(function (_, i) {
      return series.reduce(function (s, x) { return s + x[metric][i]; }, 0);
    });
    var peak = Math.max.apply(null, totals.concat([0]));
    var tick = metric === "cost" && peak < 0.05 ? 0.01 : niceStep(peak / 5);
    var ticks = Math.max(1, Math.ceil(peak / tick)), max = tick * ticks;
    var root = svg("svg", { viewBox: "0 0 " + W + " " + H, width: "100%", height: H, role: "img",
                            "aria-label": $("chart-title").textContent });
    for (var g = 0; g <= ticks; g++) {
      var y = m.t + ih - ih * g / ticks, v = tick * g;
      root.appendChild(svg("line", { x1: m.l, x2: W - m.r, y1: y, y2: y,
                                     stroke: g ? "#edf0f6" : "#cfd5e2" }));
      root.appendChild(svg("text", { x: m.l - 8, y: y + 4, "text-anchor": "end" },
                           metric === "cost" ? usd(v, v < 10 && v > 0 ? 2 : 0) : compact(v)));
    }
    var step = iw / days.length, bw = Math.max(2, Math.min(42, step * 0.68));
    var every = Math.max(1, Math.ceil(days.length / (hourlyView ? 8 : 12)));
    days.forEach(function (day, i) {
      var x = m.l + step * i + (step - bw) / 2, base = m.t + ih;
      series.forEach(function (s, k) {
        var v = s[metric][i];
        if (v <= 0) return;
        var h = ih * v / max;
        var rect = svg("rect", { x: x, y: base - h, width: bw, height: Math.max(h, 0.5), rx: 1.5,
                                 fill: PALETTE[s.other ? PALETTE.length - 1 : k % (PALETTE.length - 1)],
                                 class: "day", "data-day": day });
        rect.appendChild(svg("title", {}, (hourlyView ? day.slice(0, 13) + "h" : shortDay(day)) + " \u00b7 " +
                             s.label + ": " + (metric === "cost" ? usd(v, 4) : full(v))));
        rect.setAttribute("tabindex", "0");  // reachable and opened from the keyboard too
        rect.setAttribute("role", "button");
        rect.addEventListener("keydown", function (event) {
          if (event.key === "Enter" || event.key === " ") { event.preventDefault(); rect.dispatchEvent(new MouseEvent("click")); }
        });
        rect.addEventListener("click", function () {
          var first = day.slice(0, 10);
          var filters = {};
          if (!hourlyView && !s.other && s.key !== undefined) {
            filters[{ tool: "tool", user: "user", model: "model" }[state.dim]] = s.key === null ? NONE : s.key;
          }
          openExplorer(filters, first, first);
        });
        root.appendChild(rect);
        base -= h;
      });
      if (i % every === 0 || i === days.length - 1) {
        root.appendChild(svg("text", { x: m.l + step * i + step / 2, y: H - 8, "text-anchor": "middle" },
                             hourlyView ? day.slice(5, 13).replace("T", " ") + "h" : shortDay(day)));
      }
    });
    if (!totals.some(function (t) { return t > 0; })) {
      root.appendChild(svg("text", { x: m.l + iw / 2, y: m.t + ih / 2, "text-anchor": "middle" },
                           "No usage in this period"));
    }
    box.appendChild(root);
    series.forEach(function (s, k) {
      legend.appendChild(el("span", {}, [
        el("i", { style: "background:" + PALETTE[s.other ? PALETTE.length - 1 : k % (PALETTE.length - 1)] }),
        document.createTextNode(s.label)]));
    });
  }

  function table(rows, columns, emptyText) {
    if (!rows.length) return el("div", { class: "empty", text: emptyText || "No usage in this period" });
    var head = el("tr", {}, columns.map(function (c) {
      return el("th", { class: c.num ? "num" : "", text: c.title });
    }));
    var body = rows.map(function (r) {
      return el("tr", {}, columns.map(function (c) {
        var cell = c.render(r);
        if (typeof cell === "string") return el("td", { class: c.num ? "num" : "", text: cell, title: cell });
        return el("td", { class: c.num ? "num" : "" }, [cell]);
      }));
    });
    return el("table", {}, [el("thead", {}, [head]), el("tbody", {}, body)]);
  }

  function shareBar(total) {
    return function (r) {
      var pct = total ? Math.max(1, Math.round(100 * r.total_tokens / total)) : 0;
      return el("div", { class: "bar", title: pct + "%" }, [el("div", { style: "width:" + pct + "%" })]);
    };
  }

  function link(dimension, r) {
    var button = el("button", { type: "button", class: "link", "data-dim": dimension,
                                "data-key": r.key === null ? NONE : r.key, text: r.label,
                                title: "Requests of " + r.label });
    button.addEventListener("click", function () {
      var filters = {};
      filters[dimension] = r.key === null ? NONE : r.key;
      openExplorer(filters);
    });
    return button;
  }

  function renderTables(d) {
    var total = d.totals.total_tokens;
    var cols = function (title) {
      var dimension = title.toLowerCase();
      return [
        { title: title, render: function (r) { return link(dimension, r); } },
        { title: "Requests", num: true, render: function (r) { return full(r.requests); } },
        { title: "Tokens", num: true, render: function (r) { return full(r.total_tokens); } },
        { title: "Cost", num: true, render: function (r) { return usd(r.cost_usd); } },
      ];
    };
    clear($("top-users")).appendChild(table(d.top_users,
      cols("User").concat([{ title: "Share", render: shareBar(total) }])));
    clear($("by-model")).appendChild(table(d.by_model.rows.slice(0, 10), cols("Model")));
    clear($("by-tool")).appendChild(table(d.by_tool.rows.slice(0, 10), cols("Tool")));
  }

  function renderBudgets(d) {
    var box = clear($("budgets")), b = d.budgets;
    if (!b.available || !b.items.length) {
      var hint = b.available ? " set (tokenscale budgets set TENANT --limit N)" : "";
      box.appendChild(el("div", { class: "empty", id: "no-budgets", text: "No budgets" + hint }));
      return;
    }
    b.items.forEach(function (item) {
      var pct = Math.min(100, item.percent_used);
      var color = pct >= 100 ? "var(--bad)" : pct >= 80 ? "var(--warn)" : "var(--ok)";
      box.appendChild(el("div", { class: "budget", "data-tenant": item.tenant }, [
        el("div", { class: "row" }, [
          el("strong", { text: item.tenant }),
          el("span", { class: "muted", text: full(item.tokens_used) + " of " + full(item.token_limit) +
                       " tokens in " + item.window_days + " days (" + item.percent_used + "%)" })]),
        el("div", { class: "meter" }, [el("div", { style: "width:" + pct + "%;background:" + color })]),
        el("div", { class: "row muted" }, [
          el("span", { class: "remaining", "data-value": String(item.tokens_remaining),
                       text: full(item.tokens_remaining) + " tokens remaining" }),
          el("span", { text: item.within_budget ? "within budget" : "over budget" })])]));
    });
  }

  function windowLabel(seconds) {
    return seconds % 86400 === 0 ? (seconds / 86400) + "-day" : (seconds / 3600) + "-hour";
  }

  function amount(n, unit) { return unit === "usd" ? usd(n) : full(n) + " tokens"; }

  function when(iso) {
    return iso ? iso.replace("T", " ").slice(0, 16) + " UTC" : "";
  }

  function renderAlerts(d) {
    var a = d.alerts, fbox = clear($("forecasts")), abox = clear($("alerts"));
    if (!a || !a.available) {
      abox.appendChild(el("div", { class: "empty", id: "no-alerts", text: "Alerts need tokenscale migrate" }));
      return;
    }
    if (a.forecasts.length) {
      fbox.appendChild(table(a.forecasts, [
        { title: "Budget", render: function (f) {
            return (f.scopeValue ? f.scope + " " + f.scopeValue : "tenant " + f.tenant) + ", " +
              windowLabel(f.windowSeconds); } },
        { title: "Used", num: true, render: function (f) {
            return amount(f.used, f.unit) + " of " + amount(f.limit, f.unit) + " (" + f.percentUsed + "%)"; } },
        { title: "Rate", num: true, render: function (f) { return amount(f.ratePerHour, f.unit) + "/h"; } },
        { title: "Runs out", render: function (f) {
            return f.forecastExhaustedAt ? when(f.forecastExhaustedAt) : "not at this rate"; } },
      ]));
    } else if (a.forecasts_skipped) {
      fbox.appendChild(el("div", { class: "muted", text: "Many budget windows: see GET /v1/budgets/forecast" }));
    }
    if (!a.items.length) {
      abox.appendChild(el("div", { class: "empty", id: "no-alerts",
        text: "No alerts yet (webhooks: tokenscale alerts webhooks add TENANT URL)" }));
      return;
    }
    abox.appendChild(table(a.items, [
      { title: "Fired", render: function (x) { return when(x.firedAt); } },
      { title: "Alert", render: function (x) { return x.message; } },
      { title: "Delivery", render: function (x) { return x.delivery; } },
    ]));
  }

  function renderTenants(d) {
    var select = $("tenant"), current = d.tenant || "";
    clear(select).appendChild(el("option", { value: "", text: "All tenants" }));
    var seen = {};
    d.tenants.concat(d.budgets.items.map(function (i) { return i.tenant; })).concat(current ? [current] : [])
      .forEach(function (t) {
        if (seen[t]) return;
        seen[t] = true;
        select.appendChild(el("option", { value: t, text: t }));
      });
    select.value = current;
  }

  function showError(message) {
    var box = $("error");
    box.hidden = !message;
    box.textContent = message || "";
  }

  function authHeaders() {
    var headers = {};
    var key = window.sessionStorage.getItem("tokenscale.key");
    if (key) headers.Authorization = "Bearer " + key;
    return headers;
  }

  function getJson(path, query) {
    return fetch(path + "?" + query.toString(), { headers: authHeaders(), cache: "no-store" })
      .then(function (response) {
        if (response.status === 401 || response.status === 403) {
          $("auth").style.display = "flex";
        }
        return response.json().then(function (body) {
          if (!response.ok) throw new Error(body.error || ("HTTP " + response.status));
          return body;
        });
      });
  }

  function rangeQuery() {
    var query = new URLSearchParams();
    if ($("range-from").value || $("range-to").value) {
      if ($("range-from").value) query.set("since", $("range-from").value);
      if ($("range-to").value) query.set("until", $("range-to").value);
    } else {
      query.set("days", $("days").value);
    }
    if ($("tenant").value) query.set("tenant", $("tenant").value);
    return query;
  }

  function loadHourly(d) {
    if (state.gran !== "hour") return Promise.resolve();
    var query = new URLSearchParams();
    var last = d.until, first = d.since;
    var lastDate = new Date(last + "T00:00:00Z"), firstDate = new Date(first + "T00:00:00Z");
    if ((lastDate - firstDate) / 86400000 > 13) {  // at most 14 days of hours on one chart
      firstDate = new Date(lastDate.getTime() - 13 * 86400000);
    }
    query.set("since", firstDate.toISOString().slice(0, 10));
    query.set("until", last);
    if (d.tenant) query.set("tenant", d.tenant);
    return getJson("api/dashboard/hourly", query).then(function (h) { state.hourly = h; });
  }

  function load() {
    var query = rangeQuery();
    var page = new URLSearchParams(query.toString());
    if (state.gran === "hour") page.set("view", "hourly");
    window.history.replaceState(null, "", "?" + page.toString());
    return getJson("api/dashboard/summary", query)
      .then(function (d) { state.data = d; return loadHourly(d).then(function () { return d; }); })
      .then(function (d) {
        showError("");
        state.data = d;
        renderTenants(d);
        renderKpis(d);
        renderChart();
        renderTables(d);
        renderBudgets(d);
        renderAlerts(d);
        $("footer").textContent = "tokenscale.usage_daily \u00b7 " + d.since + " to " + d.until +
          " (UTC) \u00b7 " + (d.tenant ? "tenant " + d.tenant : "all tenants") +
          (d.admin ? " (admin view)" : "") + " \u00b7 updated " +
          new Date(d.generated_at).toLocaleTimeString("en-US", { hour12: false });
        document.body.setAttribute("data-loaded", "true");
      })
      .catch(function (err) {
        showError("Could not load the dashboard: " + err.message);
        document.body.setAttribute("data-loaded", "error");
      });
  }

  // --- the request explorer ------------------------------------------------------------------------

  var REQUEST_COLUMNS = [
    ["time", "Time (UTC)", false, "time"], ["user_email", "User", false, "user"],
    ["tool", "Tool", false, "tool"], ["model", "Model", false, "model"],
    ["session_id", "Session", false, "session"], ["input_tokens", "Input", true],
    ["cache_read_tokens", "Cache read", true], ["cache_write_tokens", "Cache write", true],
    ["output_tokens", "Output", true], ["reasoning_tokens", "Reasoning", true],
    ["total_tokens", "Tokens", true, "tokens"], ["cost_usd", "Cost (USD)", true, "cost"],
    ["cost_source", "Priced by", false], ["source", "Source", false],
    ["duration_ms", "Duration (ms)", true, "duration"]];
  var GROUP_COLUMNS = [
    ["key", "Id", false], ["users", "Users", false], ["tools", "Tools", false],
    ["models", "Models", false], ["first", "First (UTC)", false], ["last", "Last (UTC)", false],
    ["requests", "Requests", true], ["total_tokens", "Tokens", true], ["cost_usd", "Cost (USD)", true]];

  function explorerFilters() {
    var found = {};
    FILTER_NAMES.forEach(function (name) {
      var value = $("f-" + name).value.trim();
      if (value) found[name] = value;
    });
    return found;
  }

  function explorerQuery() {
    var query = new URLSearchParams();
    var filters = explorerFilters();
    Object.keys(filters).forEach(function (k) { query.set(k, filters[k]); });
    var since = $("f-since").value, until = $("f-until").value;
    if (!since && state.data) since = state.data.since;
    if (!until && state.data) until = state.data.until;
    if (since) query.set("since", since);
    if (until) query.set("until", until);
    if ($("tenant").value) query.set("tenant", $("tenant").value);
    return query;
  }

  function cellText(column, value) {
    if (value === null || value === undefined) return "";
    if (column === "cost_usd") return value;
    if (typeof value === "number") return column === "duration_ms" ? value.toFixed(1) : full(value);
    if (column === "time" || column === "first" || column === "last") return value.replace("T", " ").replace("Z", "");
    return String(value);
  }

  function renderExplorer() {
    var x = state.explorer, box = clear($("explorer-table"));
    if (!x) return;
    var columns = x.kind === "requests" ? REQUEST_COLUMNS : GROUP_COLUMNS;
    var head = el("tr", {}, columns.map(function (c) {
      var attrs = { class: c[2] ? "num" : "", scope: "col" };
      if (x.kind === "requests" && c[3]) {
        attrs["aria-sort"] = state.sort === c[3] ? (state.order === "asc" ? "ascending" : "descending") : "none";
        var button = el("button", { type: "button", class: "sort", "data-sort": c[3],
                                    text: c[1] + (state.sort === c[3] ? (state.order === "asc" ? " \u25b2" : " \u25bc") : "") });
        button.addEventListener("click", function () {
          if (state.sort === c[3]) state.order = state.order === "asc" ? "desc" : "asc";
          else { state.sort = c[3]; state.order = c[3] === "time" ? "desc" : "desc"; }
          loadExplorer();
        });
        return el("th", attrs, [button]);
      }
      return el("th", attrs, [document.createTextNode(c[1])]);
    }));
    var body = x.rows.map(function (r) {
      return el("tr", {}, columns.map(function (c) {
        var text = cellText(c[0], r[c[0]]);
        if (x.kind !== "requests" && c[0] === "key") {
          var open = el("button", { type: "button", class: "link", text: text, title: text });
          open.addEventListener("click", function () {
            var filters = explorerFilters();
            filters[x.kind] = r.key;
            setView("requests");
            openExplorer(filters, r.first.slice(0, 10), r.last.slice(0, 10));
          });
          return el("td", {}, [open]);
        }
        return el("td", { class: c[2] ? "num" : "", text: text, title: text });
      }));
    });
    if (!x.rows.length) {
      box.appendChild(el("div", { class: "empty", text: "No requests match" }));
    } else {
      box.appendChild(el("table", { id: "explorer-rows", "aria-describedby": "explorer-status" },
                         [el("thead", {}, [head]), el("tbody", {}, body)]));
    }
  }

  function loadExplorer() {
    var query = explorerQuery(), kind = state.view;
    var path = kind === "requests" ? "api/dashboard/requests" : "api/dashboard/groups";
    if (kind === "requests") { query.set("sort", state.sort); query.set("order", state.order); }
    else query.set("by", kind);
    $("explorer").setAttribute("data-loaded", "loading");
    return getJson(path, query).then(function (x) {
      x.kind = kind;
      state.explorer = x;
      renderExplorer();
      var shown = x.rows.length;
      var filters = explorerFilters();
      var what = Object.keys(filters).map(function (k) { return k + " " + filters[k]; }).join(", ");
      $("explorer-title").textContent = (kind === "requests" ? "Requests" : kind === "session" ? "Sessions"
                                        : "Conversations") + (what ? " of " + what : "");
      $("explorer-status").textContent = kind === "requests"
        ? full(x.totals.rows) + " requests \u00b7 " + full(x.totals.total_tokens) + " tokens \u00b7 " +
          (x.totals.cost_usd === null ? "no cost" : "$" + x.totals.cost_usd) +
          (x.truncated ? " \u00b7 showing the first " + full(shown) : "") + " \u00b7 " +
          x.since.slice(0, 10) + " to " + lastDay(x)
        : full(shown) + (kind === "session" ? " sessions" : " conversations") + (x.truncated ? " (first shown)" : "");
      $("explorer").setAttribute("data-loaded", kind);
      $("explorer").setAttribute("data-rows", String(shown));
    }).catch(function (err) {
      $("explorer-status").textContent = "Could not load: " + err.message;
      $("explorer").setAttribute("data-loaded", "error");
    });
  }

  function openExplorer(filters, since, until) {
    FILTER_NAMES.forEach(function (name) { $("f-" + name).value = filters[name] || ""; });
    $("f-since").value = since || "";
    $("f-until").value = until || "";
    setView("requests");
    $("explorer").scrollIntoView({ block: "start" });
    return loadExplorer();
  }

  function setView(view) {
    state.view = view;
    Array.prototype.forEach.call($("view-seg").querySelectorAll("button"), function (b) {
      b.classList.toggle("on", b.getAttribute("data-view") === view);
      b.setAttribute("aria-pressed", b.getAttribute("data-view") === view ? "true" : "false");
    });
  }

  function csvCell(value) {
    var text = value === null || value === undefined ? "" : String(value);
    if (/^[=+@\t\r]/.test(text)) text = "'" + text;  // no formulas when opened in a spreadsheet
    return /[",\n\r]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  function download(name, type, text) {
    var url = URL.createObjectURL(new Blob([text], { type: type }));
    var a = el("a", { href: url, download: name });
    document.body.appendChild(a);
    a.click();
    document.body.removeChild(a);
    window.setTimeout(function () { URL.revokeObjectURL(url); }, 60000);
  }

  function lastDay(x) {  // the API's range ends before "until": name the last day it includes
    return new Date(Date.parse(x.until) - 1).toISOString().slice(0, 10);
  }

  function exportName(ext) {
    var x = state.explorer;
    return "tokenscale-" + (x.kind === "requests" ? "requests" : x.kind + "s") + "-" +
      x.since.slice(0, 10) + "-" + lastDay(x) + "." + ext;
  }

  function exportCsv() {
    var x = state.explorer;
    if (!x) return;
    var columns = x.kind === "requests" ? x.columns : GROUP_COLUMNS.map(function (c) { return c[0]; });
    var lines = [columns.join(",")].concat(x.rows.map(function (r) {
      return columns.map(function (c) { return csvCell(r[c]); }).join(",");
    }));
    download(exportName("csv"), "text/csv", lines.join("\r\n") + "\r\n");
  }

  function exportJson() {
    var x = state.explorer;
    if (!x) return;
    download(exportName("json"), "application/json", JSON.stringify(x, null, 2) + "\n");
  }

  function segment(id, attr, apply) {
    Array.prototype.forEach.call($(id).querySelectorAll("button"), function (button) {
      button.addEventListener("click", function () {
        Array.prototype.forEach.call($(id).querySelectorAll("button"), function (b) {
          b.classList.toggle("on", b === button);
        });
        apply(button.getAttribute(attr));
        if (state.data) renderChart();
      });
    });
  }

  if (params.get("days")) {
    var wanted = params.get("days");
    if (!Array.prototype.some.call($("days").options, function (o) { return o.value === wanted; })) {
      $("days").appendChild(el("option", { value: wanted, text: "Last " + wanted + " days" }));
    }
    $("days").value = wanted;
  }
  if (params.get("tenant")) {
    $("tenant").appendChild(el("option", { value: params.get("tenant"), text: params.get("tenant") }));
    $("tenant").value = params.get("tenant");
  }
  segment("dim-seg", "data-dim", function (v) { state.dim = v; });
  segment("metric-seg", "data-metric", function (v) { state.metric = v; });
  segment("gran-seg", "data-gran", function (v) {
    state.gran = v;
    if (v === "hour" && !state.hourly) load();
  });
  Array.prototype.forEach.call($("view-seg").querySelectorAll("button"), function (button) {
    button.addEventListener("click", function () { setView(button.getAttribute("data-view")); loadExplorer(); });
  });
  $("filters").addEventListener("submit", function (event) { event.preventDefault(); loadExplorer(); });
  $("f-clear").addEventListener("click", function () { openExplorer({}); });
  $("export-csv").addEventListener("click", exportCsv);
  $("export-json").addEventListener("click", exportJson);
  ["range-from", "range-to"].forEach(function (id) { $(id).addEventListener("change", load); });
  if (params.get("since")) $("range-from").value = params.get("since");
  if (params.get("until")) $("range-to").value = params.get("until");
  if (params.get("view") === "hourly") {
    state.gran = "hour";
    Array.prototype.forEach.call($("gran-seg").querySelectorAll("button"), function (b) {
      b.classList.toggle("on", b.getAttribute("data-gran") === "hour");
    });
  }
  $("days").addEventListener("change", load);
  $("tenant").addEventListener("change", load);
  $("refresh").addEventListener("click", load);
  $("auth").addEventListener("submit", function (event) {
    event.preventDefault();
    window.sessionStorage.setItem("tokenscale.key", $("key").value.trim());
    load();
  });
  window.addEventListener("resize", function () { if (state.data) renderChart(); });
  load().then(function () {
    var wanted = {};
    FILTER_NAMES.forEach(function (name) { if (params.get(name)) wanted[name] = params.get(name); });
    return Object.keys(wanted).length ? openExplorer(wanted) : loadExplorer();
  });
  window.setInterval(load, 60000);
})();
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


PAGE_HTML: Final = (
    '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    "<title>tokenscale &middot; AI usage</title>\n"
    f"<style>{_CSS}</style>\n</head>\n<body>{_BODY}<script>{_JS}</script>\n</body>\n</html>\n"
)

#: Only this page's own inline script and style run; data comes from the same origin.
CONTENT_SECURITY_POLICY: Final = (
    f"default-src 'none'; script-src {_hash(_JS)}; style-src {_hash(_CSS)}; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
