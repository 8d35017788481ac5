/* Publisher pages: upload an ONNX file straight to object storage, and follow its validation live.
 *
 * New version page ([data-version-upload] form): hash the file in the browser (SHA-256), declare the
 * version through the API, send the bytes to the presigned POST or the multipart part URLs with
 * XMLHttpRequest (progress bar, percent, MB/s), call complete, then go to the version page.
 * Version page ([data-version-status]): poll GET /api/v1/versions/{id} every second while the worker
 * validates, redraw the steps as they finish, and reload once the verdict is in.
 * No build step, no dependencies.
 */
(function () {
  "use strict";

  // ---- SHA-256, incremental (for files too big to hash in one crypto.subtle call) ----------------
  var K = new Uint32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2
  ]);

  function Sha256() {
    this.h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
    this.w = new Uint32Array(64);
    this.buf = new Uint8Array(64);
    this.bufLen = 0;
    this.total = 0;
  }

  Sha256.prototype._block = function (d, off) {
    var w = this.w, h = this.h, t, x, y;
    for (t = 0; t < 16; t++) {
      var j = off + t * 4;
      w[t] = (d[j] << 24) | (d[j + 1] << 16) | (d[j + 2] << 8) | d[j + 3];
    }
    for (t = 16; t < 64; t++) {
      x = w[t - 15]; y = w[t - 2];
      var s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      var s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      w[t] = (w[t - 16] + s0 + w[t - 7] + s1) | 0;
    }
    var a = h[0], b = h[1], c = h[2], dd = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (t = 0; t < 64; t++) {
      var S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      var t1 = (hh + S1 + ((e & f) ^ (~e & g)) + K[t] + w[t]) | 0;
      var S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      var t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      hh = g; g = f; f = e; e = (dd + t1) | 0; dd = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += dd; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  };

  Sha256.prototype.update = function (data) {
    var i = 0, n = data.length;
    this.total += n;
    if (this.bufLen > 0) {
      var take = Math.min(64 - this.bufLen, n);
      this.buf.set(data.subarray(0, take), this.bufLen);
      this.bufLen += take; i = take;
      if (this.bufLen === 64) { this._block(this.buf, 0); this.bufLen = 0; }
    }
    for (; i + 64 <= n; i += 64) this._block(data, i);
    if (i < n) { this.buf.set(data.subarray(i), 0); this.bufLen = n - i; }
    return this;
  };

  Sha256.prototype.hex = function () {
    var bits = this.total * 8;
    var pad = new Uint8Array(((this.bufLen < 56 ? 56 : 120) - this.bufLen) + 8);
    pad[0] = 0x80;
    var hi = Math.floor(bits / 0x100000000), lo = bits >>> 0;
    var p = pad.length - 8;
    pad[p] = hi >>> 24; pad[p + 1] = hi >>> 16; pad[p + 2] = hi >>> 8; pad[p + 3] = hi;
    pad[p + 4] = lo >>> 24; pad[p + 5] = lo >>> 16; pad[p + 6] = lo >>> 8; pad[p + 7] = lo;
    var total = this.total;
    this.update(pad);
    this.total = total;
    var out = "";
    for (var k = 0; k < 8; k++) out += ("00000000" + this.h[k].toString(16)).slice(-8);
    return out;
  };

  function toHex(buffer) {
    return Array.prototype.map.call(new Uint8Array(buffer), function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  var SUBTLE_MAX_BYTES = 512 * 1024 * 1024;
  var HASH_CHUNK = 8 * 1024 * 1024;

  /** SHA-256 of a File/Blob as hex; onProgress(fraction) while reading big files in chunks. */
  function fileSha256(file, onProgress) {
    var subtle = window.crypto && window.crypto.subtle;
    if (subtle && file.size <= SUBTLE_MAX_BYTES) {
      return file.arrayBuffer().then(function (buf) { return subtle.digest("SHA-256", buf); }).then(toHex);
    }
    var hash = new Sha256(), offset = 0;
    function next() {
      if (offset >= file.size) return Promise.resolve(hash.hex());
      var end = Math.min(offset + HASH_CHUNK, file.size);
      return file.slice(offset, end).arrayBuffer().then(function (buf) {
        hash.update(new Uint8Array(buf));
        offset = end;
        if (onProgress) onProgress(offset / file.size);
        return next();
      });
    }
    return next();
  }

  // ---- small helpers -------------------------------------------------------------------------------
  function csrfToken() {
    var input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function apiFetch(url, method, body) {
    return fetch(url, {
      method: method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRFToken": csrfToken() },
      body: body === undefined ? undefined : JSON.stringify(body)
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (!response.ok) {
          var error = (data && data.error) || {};
          var err = new Error(error.message || ("The server answered " + response.status + "."));
          err.code = error.code; err.fields = error.fields || {}; err.status = response.status;
          throw err;
        }
        return data;
      });
    });
  }

  function mb(bytes) { return (bytes / (1024 * 1024)).toFixed(1); }

  function storageErrorMessage(xhr) {
    var text = xhr.responseText || "";
    var match = /<Message>([\s\S]*?)<\/Message>/.exec(text);
    if (xhr.status === 0) return "Object storage could not be reached (network or CORS problem).";
    return "Object storage refused the upload (" + xhr.status + (match ? ": " + match[1] : "") + ").";
  }

  /** One XHR; onProgress(loadedBytes). Resolves with the XHR. */
  function xhrSend(method, url, body, onProgress) {
    return new Promise(function (resolve, reject) {
      var xhr = new XMLHttpRequest();
      xhr.open(method, url, true);
      xhr.upload.onprogress = function (event) { if (onProgress) onProgress(event.loaded); };
      xhr.onload = function () {
        if (xhr.status >= 200 && xhr.status < 300) resolve(xhr);
        else reject(new Error(storageErrorMessage(xhr)));
      };
      xhr.onerror = function () { reject(new Error(storageErrorMessage(xhr))); };
      xhr.onabort = function () { reject(new Error("The upload was cancelled.")); };
      xhr.send(body);
    });
  }

  function uploadPost(instructions, file, onProgress) {
    var form = new FormData();
    Object.keys(instructions.fields).forEach(function (name) { form.append(name, instructions.fields[name]); });
    form.append("file", file); // S3 requires the file to be the last field
    return xhrSend("POST", instructions.url, form, onProgress).then(function () { return null; });
  }

  function uploadMultipart(instructions, file, onProgress) {
    var size = instructions.part_size, loaded = {}, done = [], queue = instructions.parts.slice();
    function report() {
      var sum = 0;
      Object.keys(loaded).forEach(function (k) { sum += loaded[k]; });
      onProgress(sum);
    }
    function sendPart(part, attempt) {
      var start = (part.part_number - 1) * size;
      var blob = file.slice(start, Math.min(start + size, file.size));
      return xhrSend("PUT", part.url, blob, function (bytes) { loaded[part.part_number] = bytes; report(); })
        .then(function (xhr) {
          var etag = xhr.getResponseHeader("ETag");
          if (!etag) throw new Error("Object storage did not expose the ETag header (its CORS rules must list ETag in ExposeHeaders).");
          loaded[part.part_number] = blob.size; report();
          done.push({ part_number: part.part_number, etag: etag });
        })
        .catch(function (err) {
          loaded[part.part_number] = 0; report();
          if (attempt < 3) return sendPart(part, attempt + 1);
          throw err;
        });
    }
    function worker() {
      var part = queue.shift();
      if (!part) return Promise.resolve();
      return sendPart(part, 1).then(worker);
    }
    var workers = [];
    for (var i = 0; i < Math.min(3, instructions.parts.length); i++) workers.push(worker());
    return Promise.all(workers).then(function () {
      return done.sort(function (a, b) { return a.part_number - b.part_number; });
    });
  }

  // ---- the new-version form ------------------------------------------------------------------------
  function initUploadForm(form) {
    var progress = form.querySelector("[data-progress]");
    var bar = form.querySelector("[data-progress-bar]");
    var progressBox = form.querySelector("[data-progress-box]");
    var statusLine = form.querySelector("[data-upload-status]");
    var errorBox = form.querySelector("[data-upload-error]");
    var button = form.querySelector("button[type=submit]");
    var fileInput = form.querySelector("input[type=file]");
    var state = { version: null, fileKey: null };

    function setStatus(text) { statusLine.textContent = text; }
    function setProgress(fraction) {
      var pct = Math.max(0, Math.min(100, fraction * 100));
      bar.style.width = pct.toFixed(1) + "%";
      progress.setAttribute("aria-valuenow", pct.toFixed(0));
    }
    function clearErrors() {
      errorBox.hidden = true; errorBox.textContent = "";
      form.querySelectorAll("[data-field-error]").forEach(function (el) { el.textContent = ""; el.hidden = true; });
    }
    function showError(err) {
      var shown = false;
      Object.keys(err.fields || {}).forEach(function (name) {
        var el = form.querySelector('[data-field-error="' + name + '"]');
        if (el) { el.textContent = err.fields[name].join(" "); el.hidden = false; shown = true; }
      });
      errorBox.textContent = err.message + (shown ? " See the fields above." : "");
      errorBox.hidden = false;
      setStatus("");
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      clearErrors();
      var file = fileInput.files && fileInput.files[0];
      if (!file) { showError({ message: "Choose the ONNX file to upload.", fields: { artifact: ["Choose a file."] } }); return; }
      var sampleText = form.elements.sample_input.value.trim(), sample = null;
      if (sampleText) {
        try { sample = JSON.parse(sampleText); } catch (e) {
          showError({ message: "The sample input is not valid JSON.", fields: { sample_input: [String(e.message)] } });
          return;
        }
      }
      var fileKey = [file.name, file.size, file.lastModified].join(":");
      button.disabled = true;
      progressBox.hidden = false;
      setProgress(0);

      var started;
      var version;
      var fresh = state.version && state.fileKey === fileKey;
      setStatus("Computing the file's SHA-256 checksum…");
      var flow = fresh
        ? apiFetch(form.dataset.uploadUrlTemplate.replace("{id}", state.version.id), "GET").then(function (upload) {
            return { version: state.version, upload: upload };
          })
        : fileSha256(file, function (f) { setProgress(f); setStatus("Computing the file's SHA-256 checksum… " + Math.round(f * 100) + "%"); })
            .then(function (sha256) {
              setStatus("Registering version " + form.elements.version.value + "…");
              return apiFetch(form.dataset.createUrl, "POST", {
                version: form.elements.version.value.trim(),
                changelog: form.elements.changelog.value,
                sample_input: sample,
                artifact_size: file.size,
                artifact_sha256: sha256
              });
            });
      flow
        .then(function (created) {
          version = created.version;
          state.version = version; state.fileKey = fileKey;
          started = performance.now();
          setProgress(0);
          var upload = created.upload;
          function onProgress(loaded) {
            var seconds = Math.max((performance.now() - started) / 1000, 0.001);
            setProgress(loaded / file.size);
            setStatus("Uploading to object storage: " + Math.round((loaded / file.size) * 100) + "% · " +
              mb(loaded) + " of " + mb(file.size) + " MB · " + mb(loaded / seconds) + " MB/s");
          }
          return upload.mode === "post" ? uploadPost(upload, file, onProgress) : uploadMultipart(upload, file, onProgress);
        })
        .then(function (parts) {
          setProgress(1);
          setStatus("Upload finished; starting validation…");
          var completeUrl = form.dataset.completeUrlTemplate.replace("{id}", version.id);
          var body = parts ? { parts: parts } : {};
          function complete(attempt) {
            return apiFetch(completeUrl, "POST", body).catch(function (err) {
              // Storage can take a moment to show a just-finished object.
              if (err.code === "upload_missing" && attempt < 5) {
                return new Promise(function (r) { setTimeout(r, 1000); }).then(function () { return complete(attempt + 1); });
              }
              throw err;
            });
          }
          return complete(1);
        })
        .then(function () {
          window.location.assign(form.dataset.versionPageTemplate.replace("{id}", version.id));
        })
        .catch(function (err) {
          button.disabled = false;
          if (state.version) err.message += " You can try the upload again; the version " + state.version.version + " is kept.";
          showError(err);
        });
    });
  }

  // ---- the version page: live validation report ------------------------------------------------------
  var STEP_ICONS = { ok: "✓", passed: "✓", failed: "✗", skipped: "–", running: "…", warning: "!" };
  var STEP_BADGES = { ok: "badge-ok", passed: "badge-ok", failed: "badge-bad", skipped: "", warning: "badge-warn", running: "badge-warn" };
  var LIVE = ["uploading", "validating"];

  function renderSteps(list, steps) {
    list.textContent = "";
    steps.forEach(function (step) {
      var li = document.createElement("li");
      li.dataset.step = step.key;
      var badge = document.createElement("span");
      badge.className = "badge " + (STEP_BADGES[step.status] || "");
      badge.textContent = (STEP_ICONS[step.status] || "•") + " " + step.status;
      var label = document.createElement("strong");
      label.textContent = step.label;
      var detail = document.createElement("span");
      detail.className = "muted";
      detail.textContent = step.detail || "";
      li.appendChild(badge); li.appendChild(label); li.appendChild(detail);
      if (step.duration_ms) {
        var ms = document.createElement("span");
        ms.className = "muted small";
        ms.textContent = Math.round(step.duration_ms) + " ms";
        li.appendChild(ms);
      }
      list.appendChild(li);
    });
  }

  function initVersionStatus(root) {
    var url = root.dataset.versionApiUrl;
    var list = root.querySelector("[data-steps]");
    var statusBadge = root.querySelector("[data-status-badge]");
    var note = root.querySelector("[data-live-note]");
    var status = root.dataset.status;
    if (LIVE.indexOf(status) === -1) return;
    var failures = 0;

    function poll() {
      apiFetch(url, "GET").then(function (version) {
        failures = 0;
        var report = version.report || {};
        if (report.steps) renderSteps(list, report.steps);
        if (statusBadge) statusBadge.textContent = version.status_display;
        if (LIVE.indexOf(version.status) === -1) {
          window.location.reload(); // the server renders the verdict, signature and metrics
          return;
        }
        if (note) {
          note.textContent = version.status === "uploading"
            ? "Waiting for the upload to finish…"
            : (report.steps && report.steps.length ? "Validating: " + report.steps.length + " checks done…" : "Queued for a validation worker…");
        }
        setTimeout(poll, 1000);
      }).catch(function () {
        failures += 1;
        setTimeout(poll, Math.min(1000 * Math.pow(2, failures), 15000));
      });
    }
    setTimeout(poll, 1000);
  }

  document.querySelectorAll("form[data-version-upload]").forEach(initUploadForm);
  document.querySelectorAll("[data-version-status]").forEach(initVersionStatus);

  // For tests (node) and the console.
  window.MarketplaceUpload = { Sha256: Sha256, fileSha256: fileSha256 };
})();
