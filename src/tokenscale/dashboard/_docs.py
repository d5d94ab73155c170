# ruff: noqa: E501 - the page's embedded JavaScript and CSS keep their own line lengths
"""Interactive documentation of the HTTP API at ``/docs``: one self-contained page (no CDN) that reads
``/openapi.json``, lists every operation with its parameters, body and responses, and sends tries."""

from __future__ import annotations

import base64
import hashlib
from typing import Final

__all__ = ["DOCS_CONTENT_SECURITY_POLICY", "DOCS_HTML"]

_CSS: Final = """
* { box-sizing: border-box; }
body { margin: 0; background: #f4f6fb; color: #1b2233;
  font: 14px/1.45 "Liberation Sans", "Helvetica Neue", Arial, sans-serif; }
header { display: flex; gap: 16px; align-items: center; padding: 14px 28px; background: #161c2d; color: #fff; }
header h1 { font-size: 20px; margin: 0; }
header .muted { color: #aab3c8; }
header form { margin-left: auto; display: flex; gap: 8px; }
input, select, textarea, button { font: inherit; border-radius: 6px; border: 1px solid #c9cfdd; padding: 5px 8px; }
button { cursor: pointer; background: #4f6bff; color: #fff; border-color: #4f6bff; }
main { padding: 18px 28px 40px; max-width: 1200px; }
details.op { background: #fff; border: 1px solid #e3e7f0; border-radius: 10px; margin: 10px 0; }
details.op > summary { padding: 10px 14px; cursor: pointer; display: flex; gap: 12px; align-items: center; }
.method { font-weight: 700; border-radius: 4px; padding: 2px 8px; color: #fff; min-width: 60px;
  text-align: center; font-size: 12px; }
.get { background: #1f9d6b; } .post { background: #4f6bff; } .put { background: #d9822b; }
.delete { background: #d64545; }
.path { font-family: "Liberation Mono", monospace; }
.body { padding: 0 14px 14px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0; }
th, td { text-align: left; border-bottom: 1px solid #eef0f5; padding: 4px 6px; vertical-align: top; }
pre { background: #0f1524; color: #dfe6ff; padding: 10px; border-radius: 8px; overflow: auto; max-height: 360px; }
.muted { color: #6b7489; }
"""

_BODY: Final = """
<header><h1>tokenscale HTTP API</h1><span class="muted" id="version"></span>
  <form id="keyform"><label for="key" class="muted">API key</label>
    <input id="key" type="password" placeholder="tsk_..." size="24"><button type="submit">Use</button></form>
</header>
<main><p class="muted">From <a href="openapi.json">/openapi.json</a>. Open an operation, fill in its
parameters and send it to this server.</p><div id="ops" aria-live="polite">Loading&hellip;</div></main>
"""

_JS: Final = r"""
(function () {
  "use strict";
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    for (var k in attrs || {}) {
      if (k === "text") node.textContent = attrs[k]; else node.setAttribute(k, attrs[k]);
    }
    (children || []).forEach(function (c) {
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }
  var spec = null;
  function resolve(schema) {
    var seen = 0;
    while (schema && schema.$ref && seen++ < 20) {
      var name = schema.$ref.split("/").pop();
      schema = (spec.components && spec.components.schemas || {})[name] || {};
    }
    return schema || {};
  }
  function example(schema, depth) {
    schema = resolve(schema);
    if (depth > 4) return null;
    if (schema.example !== undefined) return schema.example;
    if (schema.enum) return schema.enum[0];
    if (schema.type === "object" || schema.properties) {
      var out = {};
      Object.keys(schema.properties || {}).forEach(function (k) { out[k] = example(schema.properties[k], depth + 1); });
      return out;
    }
    if (schema.type === "array") return [example(schema.items || {}, depth + 1)];
    if (schema.type === "integer" || schema.type === "number") return 0;
    if (schema.type === "boolean") return false;
    if (schema.type === "string") return schema.format === "date" ? "2026-01-01" : "";
    return null;
  }
  function operation(path, method, op) {
    var params = op.parameters || [];
    var rows = params.map(function (p) {
      var input = el("input", { "data-param": p.name, "data-in": p.in, "aria-label": p.name,
                               placeholder: (p.schema && p.schema.default !== undefined) ? String(p.schema.default) : "" });
      return el("tr", {}, [el("td", {}, [el("code", { text: p.name })]),
        el("td", { text: p.in + (p.required ? ", required" : "") }),
        el("td", { text: p.description || "" }), el("td", {}, [input])]);
    });
    var body = null;
    var content = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
    if (content) {
      body = el("textarea", { rows: "8", cols: "90", "aria-label": "request body" });
      body.value = JSON.stringify(example(content.schema || {}, 0), null, 2);
    }
    var output = el("pre", { hidden: "" });
    var send = el("button", { type: "button", text: "Send" });
    send.addEventListener("click", function () {
      var url = path, query = new URLSearchParams();
      Array.prototype.forEach.call(details.querySelectorAll("input[data-param]"), function (i) {
        if (!i.value) return;
        if (i.getAttribute("data-in") === "path") url = url.replace("{" + i.getAttribute("data-param") + "}", encodeURIComponent(i.value));
        else if (i.getAttribute("data-in") === "query") query.append(i.getAttribute("data-param"), i.value);
      });
      var headers = { "Content-Type": "application/json" };
      var key = window.sessionStorage.getItem("tokenscale.key");
      if (key) headers.Authorization = "Bearer " + key;
      var qs = query.toString();
      fetch(url.replace(/^\//, "") + (qs ? "?" + qs : ""), { method: method.toUpperCase(), headers: headers,
                                                            body: body ? body.value : undefined })
        .then(function (r) { return r.text().then(function (t) { return [r.status, t]; }); })
        .then(function (res) {
          var text = res[1];
          try { text = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { /* not JSON */ }
          output.textContent = "HTTP " + res[0] + "\n" + text;
          output.hidden = false;
        })
        .catch(function (e) { output.textContent = String(e); output.hidden = false; });
    });
    var responses = Object.keys(op.responses || {}).map(function (code) {
      return el("tr", {}, [el("td", { text: code }), el("td", { text: op.responses[code].description || "" })]);
    });
    var details = el("details", { class: "op", id: "op-" + (op.operationId || path) }, [
      el("summary", {}, [el("span", { class: "method " + method, text: method.toUpperCase() }),
                         el("span", { class: "path", text: path }), el("span", { class: "muted", text: op.summary || "" })]),
      el("div", { class: "body" }, [
        el("p", { text: op.description || "" }),
        rows.length ? el("table", {}, [el("thead", {}, [el("tr", {}, ["Parameter", "In", "Description", "Value"].map(function (h) { return el("th", { text: h }); }))]),
                                      el("tbody", {}, rows)]) : el("p", { class: "muted", text: "No parameters." }),
        body ? el("div", {}, [el("p", { text: "Request body (JSON):" }), body]) : el("span"),
        el("table", {}, [el("thead", {}, [el("tr", {}, [el("th", { text: "Status" }), el("th", { text: "Response" })])]),
                         el("tbody", {}, responses)]),
        send, output])]);
    return details;
  }
  fetch("openapi.json").then(function (r) { return r.json(); }).then(function (doc) {
    spec = doc;
    document.getElementById("version").textContent = (doc.info && doc.info.title || "") + " " + (doc.info && doc.info.version || "");
    var box = document.getElementById("ops");
    box.textContent = "";
    Object.keys(doc.paths).sort().forEach(function (path) {
      ["get", "post", "put", "delete"].forEach(function (method) {
        if (doc.paths[path][method]) box.appendChild(operation(path, method, doc.paths[path][method]));
      });
    });
    document.body.setAttribute("data-loaded", "true");
  }).catch(function (e) {
    document.getElementById("ops").textContent = "Could not read /openapi.json: " + e;
  });
  document.getElementById("keyform").addEventListener("submit", function (event) {
    event.preventDefault();
    window.sessionStorage.setItem("tokenscale.key", document.getElementById("key").value.trim());
  });
})();
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


DOCS_HTML: Final = (
    '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    "<title>tokenscale &middot; HTTP API</title>\n"
    f"<style>{_CSS}</style>\n</head>\n<body>{_BODY}<script>{_JS}</script>\n</body>\n</html>\n"
)

#: Only the page's own script and style; requests go to the same origin.
DOCS_CONTENT_SECURITY_POLICY: Final = (
    f"default-src 'none'; script-src {_hash(_JS)}; style-src {_hash(_CSS)}; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
