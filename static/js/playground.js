// The listing page's playground: runs the form's inputs through the metered /v2 infer endpoint with the
// signed-in session (CSRF token header, no API key) and shows the outputs, the usage and the request id.
// Without JavaScript the form and the snippets still render; only Run needs this script.
(function () {
  "use strict";
  var form = document.getElementById("playground-form");
  var dataNode = document.getElementById("playground-data");
  if (!form || !dataNode) return;
  var versions = JSON.parse(dataNode.textContent);
  var result = document.getElementById("playground-result");
  var inputsBox = document.getElementById("playground-inputs");
  var picker = document.getElementById("playground-version");
  var API_KEY_VARIABLE = "MARKETPLACE_API_KEY";

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") node.textContent = attrs[key];
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) { if (child) node.appendChild(child); });
    return node;
  }

  function current() {
    var name = picker ? picker.value : versions[0].version;
    for (var i = 0; i < versions.length; i++) if (versions[i].version === name) return versions[i];
    return versions[0];
  }

  function shapeText(shape) {
    if (!shape || !shape.length) return "scalar";
    return "[" + shape.map(function (d, i) { return d === null || d < 0 ? (i === 0 ? "N" : "?") : String(d); }).join(", ") + "]";
  }

  function renderInputs(version) {
    inputsBox.textContent = "";
    version.inputs.forEach(function (input, i) {
      var id = "playground-input-" + i;
      var hint = input.datatype + " · shape " + shapeText(input.shape) + " · a JSON nested list" + (input.note ? " · " + input.note : "");
      var area = el("textarea", {
        id: id, name: input.name, rows: "4", spellcheck: "false", "data-datatype": input.datatype,
        "data-rank": String((input.shape || []).length), "aria-describedby": id + "-hint",
      });
      area.value = input.value;
      inputsBox.appendChild(el("div", { class: "playground-input" }, [
        el("label", { for: id }, [el("code", { text: input.name })]),
        el("span", { class: "muted small", id: id + "-hint", text: hint }),
        area,
      ]));
    });
    form.setAttribute("action", version.infer_path);
  }

  function nestedShape(value) {
    var shape = [];
    while (Array.isArray(value)) { shape.push(value.length); if (!value.length) break; value = value[0]; }
    return shape;
  }

  // Read the form into a V2 request; an input that is not JSON is reported by name before anything is sent.
  function readBody() {
    var inputs = [];
    var areas = inputsBox.querySelectorAll("textarea");
    for (var i = 0; i < areas.length; i++) {
      var area = areas[i];
      area.removeAttribute("aria-invalid");
      var value;
      try {
        value = JSON.parse(area.value);
      } catch (err) {
        area.setAttribute("aria-invalid", "true");
        area.focus();
        throw new Error("Input '" + area.name + "': not valid JSON (" + err.message + "). Write a nested list such as [[1.0, 2.0]].");
      }
      if (!Array.isArray(value)) value = [value];
      var shape = nestedShape(value);
      var rank = parseInt(area.getAttribute("data-rank"), 10);
      // One row written without its batch dimension: add it, as a user would mean it.
      if (rank && shape.length === rank - 1) { value = [value]; shape = [1].concat(shape); }
      inputs.push({ name: area.name, shape: shape, datatype: area.getAttribute("data-datatype"), data: value });
    }
    return { inputs: inputs };
  }

  function pyLiteral(value, indent) {
    var pad = new Array(indent + 1).join(" ");
    if (value === null) return "None";
    if (value === true) return "True";
    if (value === false) return "False";
    if (typeof value === "number" || typeof value === "string") return JSON.stringify(value);
    if (Array.isArray(value)) {
      var flat = "[" + value.map(function (v) { return pyLiteral(v, indent); }).join(", ") + "]";
      return flat.length <= 80 ? flat : "[\n" + value.map(function (v) { return pad + "    " + pyLiteral(v, indent + 4); }).join(",\n") + ",\n" + pad + "]";
    }
    var keys = Object.keys(value);
    return "{\n" + keys.map(function (k) { return pad + "    " + JSON.stringify(k) + ": " + pyLiteral(value[k], indent + 4); }).join(",\n") + ",\n" + pad + "}";
  }

  function updateSnippets(body) {
    var url = new URL(form.getAttribute("action"), window.location.href).href;
    var compact = JSON.stringify(body).replace(/'/g, "'\\''");
    document.getElementById("playground-curl").textContent =
      "curl -sS " + url + " \\\n" +
      '  -H "Authorization: Bearer $' + API_KEY_VARIABLE + '" \\\n' +
      "  -H 'Content-Type: application/json' \\\n" +
      "  -d '" + compact + "'";
    document.getElementById("playground-python").textContent =
      "import os\n\nimport requests\n\n" +
      "response = requests.post(\n" +
      "    " + JSON.stringify(url) + ",\n" +
      '    headers={"Authorization": f"Bearer {os.environ[\'' + API_KEY_VARIABLE + '\']}"},\n' +
      "    json=" + pyLiteral(body, 4) + ",\n" +
      "    timeout=30,\n" +
      ")\n" +
      "response.raise_for_status()\n" +
      'for output in response.json()["outputs"]:\n' +
      '    print(output["name"], output["shape"], output["data"])\n';
  }

  function formatNumber(v) {
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return String(v);
    return Math.abs(v) >= 1e-3 && Math.abs(v) < 1e6 ? v.toFixed(4).replace(/0+$/, "").replace(/\.$/, "") : v.toExponential(3);
  }

  // An output as a table: rows along the first dimension, the remaining dimensions flattened into columns.
  function outputTable(output) {
    var shape = output.shape || [];
    var data = output.data || [];
    var rows = shape.length ? shape[0] : 1;
    var cols = rows ? Math.max(1, data.length / rows) : 0;
    var MAX_ROWS = 50, MAX_COLS = 20;
    var table = el("table", { class: "playground-output" });
    table.appendChild(el("caption", {}, [el("code", { text: output.name })]));
    table.caption.appendChild(document.createTextNode(" " + output.datatype + " " + JSON.stringify(shape)));
    var headRow = el("tr", {}, [el("th", { scope: "col", text: "Row" })]);
    for (var c = 0; c < Math.min(cols, MAX_COLS); c++) headRow.appendChild(el("th", { scope: "col", text: String(c) }));
    if (cols > MAX_COLS) headRow.appendChild(el("th", { scope: "col", text: "…" }));
    table.appendChild(el("thead", {}, [headRow]));
    var tbody = el("tbody");
    for (var r = 0; r < Math.min(rows, MAX_ROWS); r++) {
      var tr = el("tr", {}, [el("th", { scope: "row", text: String(r) })]);
      for (c = 0; c < Math.min(cols, MAX_COLS); c++) tr.appendChild(el("td", { text: formatNumber(data[r * cols + c]) }));
      if (cols > MAX_COLS) tr.appendChild(el("td", { text: "… " + (cols - MAX_COLS) + " more" }));
      tbody.appendChild(tr);
    }
    table.appendChild(tbody);
    var wrap = el("div", { class: "table-scroll" }, [table]);
    if (rows > MAX_ROWS) wrap.appendChild(el("p", { class: "muted small", text: (rows - MAX_ROWS) + " more rows not shown." }));
    return wrap;
  }

  // "0.001200" → "0.0012", "1.500000" → "1.50": money with at least two decimals, no trailing zeros past them.
  function formatCost(cost) {
    var text = String(cost);
    if (!/^-?\d+(\.\d+)?$/.test(text)) return text;
    var parts = text.split(".");
    var decimals = (parts[1] || "").replace(/0+$/, "");
    while (decimals.length < 2) decimals += "0";
    return parts[0] + "." + decimals;
  }

  function showError(message, extra) {
    result.textContent = "";
    var box = el("div", { class: "notice notice-warn", role: "alert" }, [el("p", { text: message })]);
    if (extra) box.appendChild(extra);
    result.appendChild(box);
  }

  function showResponse(response, body, elapsedMs) {
    result.textContent = "";
    var requestId = response.headers.get("X-Request-Id") || body.id || "";
    if (!response.ok) {
      var message = typeof body.error === "string" ? body.error : "The call failed (HTTP " + response.status + ").";
      var extra = null;
      if (body.code === "subscription_required") {
        extra = el("p", {}, [el("a", { href: "#plans", text: "See the plans and subscribe" })]);
      } else if (response.status === 401) {
        extra = el("p", {}, [el("a", { href: "/accounts/login/?next=" + encodeURIComponent(location.pathname), text: "Sign in again" })]);
      }
      var fields = body.fields || {};
      inputsBox.querySelectorAll("textarea").forEach(function (area) {
        if (fields[area.name]) area.setAttribute("aria-invalid", "true");
      });
      var retry = response.headers.get("Retry-After");
      showError(message + (retry ? " Retry after " + retry + " s." : "") + " (HTTP " + response.status + (body.code ? ", " + body.code : "") + (requestId ? ", request " + requestId : "") + ")", extra);
      return;
    }
    var usage = (body.parameters || {}).usage || {};
    var facts = [
      ["Units", usage.units],
      usage.cost !== undefined ? ["Cost", formatCost(usage.cost) + (usage.currency ? " " + String(usage.currency).toUpperCase() : "")] : null,
      ["Latency", elapsedMs.toFixed(1) + " ms in the browser" + (usage.compute_ms !== undefined ? " (compute " + usage.compute_ms + " ms, queue " + usage.queue_ms + " ms)" : "")],
      ["Version", body.model_version],
      ["Request id", requestId],
    ].filter(Boolean);
    var dl = el("dl", { class: "facts playground-usage" });
    facts.forEach(function (pair) {
      dl.appendChild(el("div", { class: "fact" }, [el("dt", { text: pair[0] }), el("dd", { text: String(pair[1]) })]));
    });
    result.appendChild(el("h3", { text: "Outputs" }));
    (body.outputs || []).forEach(function (output) { result.appendChild(outputTable(output)); });
    result.appendChild(dl);
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (form.getAttribute("data-status") !== "ready") return;
    var body;
    try {
      body = readBody();
    } catch (err) {
      showError(err.message);
      return;
    }
    updateSnippets(body);
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    result.textContent = "Running…";
    var started = performance.now();
    fetch(form.getAttribute("action"), {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        "X-CSRFToken": form.querySelector("input[name=csrfmiddlewaretoken]").value,
      },
      body: JSON.stringify(body),
    })
      .then(function (response) {
        var elapsed = performance.now() - started;
        return response.text().then(function (text) {
          var parsed;
          try { parsed = JSON.parse(text); } catch (err) { parsed = { error: "The server answered HTTP " + response.status + " without a JSON body." }; }
          showResponse(response, parsed, elapsed);
        });
      })
      .catch(function (err) { showError("The request did not reach the server: " + err.message); })
      .finally(function () { button.disabled = false; });
  });

  if (picker) {
    picker.addEventListener("change", function () {
      renderInputs(current());
      result.textContent = "";
      try { updateSnippets(readBody()); } catch (err) { /* an empty field: snippets wait for valid input */ }
    });
  }

  document.querySelectorAll("[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var text = document.getElementById(button.getAttribute("data-copy")).textContent;
      navigator.clipboard.writeText(text).then(function () {
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = "Copy"; }, 1500);
      });
    });
  });
})();
