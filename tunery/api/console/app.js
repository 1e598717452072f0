// tunery console: one ES module, no build step, no framework.
//
// Every user-supplied string goes into the page as text (textContent, text nodes, attribute values):
// nothing here parses a string as HTML. The API key lives in this module's memory (and, if asked, the tab's
// sessionStorage); it is sent as "Authorization: Bearer" and never put into a URL or a cookie.
// The events stream is read with fetch() (EventSource cannot send the Authorization header).

const KEY_STORE = "tunery.key";
const EVENTS_STORE = "tunery.events.";
const MAX_CACHED_EVENTS = 20000;
const PAGE_SIZE = 20;
const state = { key: null, signedIn: false, schema: null, models: null, page: null };

// --- DOM helpers -----------------------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "text") el.textContent = String(value);
    else if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "value") el.value = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

function $(selector, root = document) {
  return root.querySelector(selector);
}

let uid = 0;
function nextId(prefix) {
  uid += 1;
  return `${prefix}-${uid}`;
}

function toast(message) {
  const box = clear($("#toast"));
  box.append(h("div", { text: message }));
  setTimeout(() => { if (box.textContent === message) clear(box); }, 5000);
}

function tableWrap(label, table) {
  // a focusable, labelled region: a keyboard can scroll a wide table on a phone
  return h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": label }, table);
}

function simpleTable(caption, headers, rows, numeric = []) {
  return h("table", {},
    caption ? h("caption", { text: caption }) : null,
    h("thead", {}, h("tr", {}, headers.map((name, i) => h("th", { scope: "col", class: numeric.includes(i) ? "num" : null, text: name })))),
    h("tbody", {}, rows.map((row) => h("tr", {}, row.map((cell, i) => (cell instanceof Node && cell.tagName === "TD" ? cell
      : h("td", { class: numeric.includes(i) ? "num" : "wrap" }, cell)))))));
}

function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.filter((p) => p && p[1] !== undefined && p[1] !== null && p[1] !== "")
    .map(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)]));
}

function badge(jobState) {
  const text = String(jobState || "").replace("JOB_STATE_", "");
  return h("span", { class: `badge ${String(jobState || "").replace(/[^A-Z_]/g, "")}`, text });
}

function fmt(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return value.toLocaleString("en-US");
  return value.toLocaleString("en-US", { maximumFractionDigits: digits });
}

function pct(value) {
  return typeof value === "number" ? `${(value * 100).toFixed(1)}%` : "—";
}

function age(iso) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return "—";
  const s = Math.max(0, (Date.now() - t) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function duration(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "—";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

function idOf(name) {
  return String(name || "").split("/").pop();
}

function jobLink(job) {
  return h("a", { href: `#/jobs/${encodeURIComponent(idOf(job.name))}`, text: job.tunedModelDisplayName || idOf(job.name) });
}

function modelLink(name, text) {
  return h("a", { href: `#/models/${encodeURIComponent(idOf(name))}`, text: text || name });
}

// --- the API -----------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.violations = [];
    for (const detail of error.details || []) {
      for (const v of detail.fieldViolations || []) this.violations.push(v);
    }
  }
}

function authHeaders(extra = {}) {
  const headers = { ...extra };
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  return headers;
}

async function api(path, { method = "GET", json, headers = {}, signal } = {}) {
  const init = { method, headers: authHeaders(headers), signal, credentials: "omit", cache: "no-store" };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  const response = await fetch(path, init);
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (response.status === 401 && state.signedIn) {
    signOut("The server refused the API key; sign in again.");
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

async function schema() {
  if (!state.schema) {
    const response = await fetch("/openapi.json", { credentials: "omit" });
    state.schema = await response.json();
  }
  return state.schema;
}

function component(doc, name) {
  return ((doc.components || {}).schemas || {})[name] || {};
}

// A property's own schema: the non-null branch of an optional field's anyOf.
function plain(text) {
  return String(text || "").replace(/`/g, "");
}

function inner(prop) {
  return ((prop && prop.anyOf) || [prop || {}]).find((s) => s.type && s.type !== "null") || {};
}

async function models(refresh = false) {
  if (!state.models || refresh) state.models = (await api("/v1/models")).models || [];
  return state.models;
}

function upload(file, fields, onProgress) {
  // XMLHttpRequest: fetch() reports no upload progress
  return new Promise((resolve, reject) => {
    const form = new FormData();
    form.append("file", file, file.name);
    for (const [k, v] of Object.entries(fields)) if (v) form.append(k, v);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/files");
    xhr.withCredentials = false;
    if (state.key) xhr.setRequestHeader("Authorization", `Bearer ${state.key}`);
    xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); });
    xhr.addEventListener("load", () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { body = null; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, body));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, { error: { message: "the upload failed: the server could not be reached" } })));
    xhr.send(form);
  });
}

// Server-Sent Events over fetch(): each "id:"/"data:" block becomes onEvent(id, data). Resolves when the
// server ends the stream (the job has ended and every event was sent).
async function readEvents(path, lastId, onEvent, signal) {
  const headers = authHeaders({ Accept: "text/event-stream" });
  if (lastId) headers["Last-Event-ID"] = String(lastId);
  const response = await fetch(path, { headers, signal, credentials: "omit", cache: "no-store" });
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch { body = null; }
    throw new ApiError(response.status, body);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let id = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("id:")) id = line.slice(3).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(id, JSON.parse(data.join("\n")));
    }
  }
}

// --- sign in -------------------------------------------------------------------------------------------------

function signOut(message) {
  state.key = null;
  state.signedIn = false;
  state.models = null;
  for (const name of Object.keys(sessionStorage)) if (name.startsWith("tunery.")) sessionStorage.removeItem(name);
  leavePage();
  renderSignIn(message);
}

function renderSignIn(message) {
  $("#nav").hidden = true;
  $("#signout").hidden = true;
  $("#who").textContent = "";
  document.title = "Sign in · tunery console";
  const main = clear($("#main"));
  const error = h("p", { class: "error", id: "signin-error", role: "alert" });
  const keyInput = h("input", { id: "api-key", type: "password", autocomplete: "off", spellcheck: "false", "aria-describedby": "api-key-hint signin-error" });
  const remember = h("input", { id: "remember", type: "checkbox" });
  const form = h("form", { class: "card", id: "signin", novalidate: true },
    h("h1", { text: "Sign in to the tunery console" }),
    h("div", { class: "field" },
      h("label", { for: "api-key", text: "API key" }),
      keyInput,
      h("p", { class: "hint", id: "api-key-hint", text: "A key from 'tunery keys create --tenant NAME'. Leave it empty on a server without keys (it answers this machine only)." })),
    h("div", { class: "field" }, h("label", { class: "inline", for: "remember" }, remember, "Keep the key for this tab (session storage) so a reload stays signed in")),
    error,
    h("button", { type: "submit", text: "Sign in" }));
  if (message) error.textContent = message;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const key = keyInput.value.trim();
    state.key = key || null;
    try {
      await models(true);
    } catch (exc) {
      state.key = null;
      error.textContent = exc.status === 401 ? "That key was refused: check it and try again." : exc.message;
      keyInput.focus();
      return;
    }
    if (remember.checked && key) sessionStorage.setItem(KEY_STORE, key);
    signedIn();
  });
  main.append(h("div", { class: "signin-wrap" }, form));
  keyInput.focus();
}

function signedIn() {
  state.signedIn = true;
  $("#nav").hidden = false;
  $("#signout").hidden = false;
  $("#who").textContent = state.key ? `key …${state.key.slice(-4)}` : "no key (local)";
  if (!location.hash.startsWith("#/")) location.hash = "#/jobs";
  else route();
}

// --- routing -------------------------------------------------------------------------------------------------

const ROUTES = [
  [/^#\/datasets$/, pageDatasets, "Datasets"],
  [/^#\/new$/, pageNewJob, "New tuning job"],
  [/^#\/jobs$/, pageJobs, "Jobs"],
  [/^#\/jobs\/([^/?#]+)$/, pageJob, "Job"],
  [/^#\/models$/, pageModels, "Models"],
  [/^#\/models\/([^/?#]+)$/, pageModel, "Tuned model"],
  [/^#\/reports$/, pageReports, "Compare reports"],
];

function leavePage() {
  if (state.page) state.page.abort();
  state.page = null;
}

function route() {
  if (!location.hash.startsWith("#/")) return; // the skip link, say
  if (!$("#nav") || $("#nav").hidden) return;
  leavePage();
  const controller = new AbortController();
  state.page = controller;
  // each page draws into a view of its own: a page still loading when it is left draws into a detached node
  const main = h("div", { class: "view" });
  clear($("#main")).append(main);
  for (const link of document.querySelectorAll("#nav a")) {
    const active = location.hash === link.getAttribute("href") || location.hash.startsWith(`${link.getAttribute("href")}/`);
    if (active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  for (const [pattern, page, title] of ROUTES) {
    const match = location.hash.match(pattern);
    if (match) {
      document.title = `${title} · tunery console`;
      const args = match.slice(1).map((part) => decodeURIComponent(part));
      Promise.resolve(page(main, controller.signal, ...args)).catch((exc) => {
        if (exc.name === "AbortError" || controller.signal.aborted) return;
        main.append(h("p", { class: "alert", role: "alert", text: exc.message || String(exc) }));
      }).finally(() => {
        const heading = $("h1", main);
        if (heading && !controller.signal.aborted && !main.contains(document.activeElement)) {
          heading.setAttribute("tabindex", "-1");
          heading.focus({ preventScroll: true });
        }
      });
      return;
    }
  }
  main.append(h("h1", { text: "Not found" }), h("p", {}, "No such page. ", h("a", { href: "#/jobs", text: "Go to the jobs" })));
}

// --- datasets ------------------------------------------------------------------------------------------------

async function pageDatasets(main, signal) {
  const doc = await schema();
  const upload_ = (((doc.paths["/v1/files"] || {}).post || {}).requestBody || {}).content || {};
  const form = ((upload_["multipart/form-data"] || {}).schema || {}).properties || {};
  const maxLength = { ...inner(form.maxLength), description: (form.maxLength || {}).description };
  const list = h("div", {}, h("p", { class: "muted", text: "Loading…" }));
  const detail = h("div", { id: "file-detail" });
  const result = h("div", { id: "upload-result", "aria-live": "polite" });
  const progress = h("progress", { id: "upload-progress", max: "100", value: "0", "aria-label": "Upload progress" });
  const progressText = h("span", { class: "muted", id: "upload-progress-text" });
  const fileInput = h("input", { id: "upload-file", type: "file", accept: ".jsonl,.json,application/jsonl,application/json,text/plain" });
  const chosen = h("p", { class: "muted", id: "upload-chosen", text: "No file chosen yet." });
  const modelInput = h("input", { id: "upload-model", type: "text", list: "model-ids", autocomplete: "off", "aria-describedby": "upload-model-hint" });
  const lengthInput = h("input", { id: "upload-max-length", type: "number", min: maxLength.minimum, max: maxLength.maximum, step: "1", "aria-describedby": "upload-max-length-hint" });
  const button = h("button", { type: "submit", text: "Upload and check" });
  let picked = null;
  const pick = (file) => {
    picked = file || null;
    chosen.textContent = picked ? `Chosen: ${picked.name} (${fmt(picked.size)} bytes)` : "No file chosen yet.";
  };
  fileInput.addEventListener("change", () => pick(fileInput.files[0]));
  const drop = h("div", { class: "drop", id: "drop-zone" },
    h("label", { for: "upload-file", text: "JSONL dataset: drop a file here, or choose one" }),
    fileInput, chosen);
  for (const name of ["dragenter", "dragover"]) drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); if (e.dataTransfer.files.length) pick(e.dataTransfer.files[0]); });
  const catalog = (await models().catch(() => [])).filter((m) => m.source);
  const uploadForm = h("form", { class: "card", id: "upload-form", novalidate: true },
    h("h2", { text: "Upload a dataset" }),
    h("p", { class: "muted", text: "The server checks every line (each problem by line and field) and counts its tokens; a file with problems is not kept." }),
    drop,
    h("div", { class: "fields" },
      h("div", { class: "field" }, h("label", { for: "upload-model", text: "Count tokens with model" }), modelInput,
        h("p", { class: "hint", id: "upload-model-hint", text: `${form.model ? form.model.description : ""} Empty: the catalog default. A catalog id or a model directory under the server's data root.` })),
      h("div", { class: "field" }, h("label", { for: "upload-max-length", text: "Max length (tokens)" }), lengthInput,
        h("p", { class: "hint", id: "upload-max-length-hint", text: `${maxLength.description || ""} ${maxLength.minimum ?? ""} to ${maxLength.maximum ?? ""}.` }))),
    h("datalist", { id: "model-ids" }, catalog.map((m) => h("option", { value: idOf(m.name) }))),
    h("div", { class: "field" }, h("label", { for: "upload-progress", text: "Progress" }), progress, progressText),
    button);
  uploadForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(result);
    if (!picked) {
      result.append(h("p", { class: "alert", role: "alert", text: "Choose a JSONL file first." }));
      fileInput.focus();
      return;
    }
    button.disabled = true;
    progress.value = 0;
    progressText.textContent = "uploading…";
    const file = picked;
    try {
      const record = await upload(file, { model: modelInput.value.trim(), maxLength: lengthInput.value.trim() }, (fraction) => {
        progress.value = Math.round(fraction * 100);
        progressText.textContent = fraction < 1 ? `${Math.round(fraction * 100)}% sent` : "sent; the server is checking every line…";
      });
      progress.value = 100;
      progressText.textContent = "checked";
      result.append(h("p", { class: "success", role: "status", text: `${file.name}: ${record.exampleCount} examples, no problems. Kept as ${record.name}.` }));
      await showFiles();
      showStats(detail, record);
    } catch (exc) {
      progressText.textContent = "refused";
      result.append(await problemsView(exc, file));
    } finally {
      button.disabled = false;
    }
  });

  async function showFiles() {
    const files = (await api("/v1/files", { signal })).files || [];
    clear(list);
    if (!files.length) {
      list.append(h("p", { class: "muted", text: "No files yet: upload one above." }));
      return;
    }
    list.append(tableWrap("Your files", simpleTable("", ["File", "Examples", "Billable tokens", "Tokenized with", "Uploaded", ""],
      files.map((f) => [
        h("button", { type: "button", class: "link", text: f.displayName, "aria-label": `Statistics of ${f.displayName}`, onclick: () => showStats(detail, f) }),
        fmt(f.exampleCount),
        fmt((f.supervisedTuningDataStats || {}).totalBillableTokenCount),
        f.tokenizedWith,
        h("time", { datetime: f.createTime, title: f.createTime, text: age(f.createTime) }),
        h("button", { type: "button", class: "secondary", text: "Delete", "aria-label": `Delete ${f.displayName}`, onclick: async () => {
          if (!window.confirm(`Delete ${f.displayName}? Jobs created from it keep their own copy.`)) return;
          await api(`/v1/${f.name}`, { method: "DELETE" });
          toast(`${f.displayName} deleted`);
          clear(detail);
          await showFiles();
        } }),
      ]), [1, 2])));
  }

  main.append(h("h1", { text: "Datasets" }), uploadForm, result,
    h("section", { class: "card", "aria-labelledby": "files-h" }, h("h2", { id: "files-h", text: "Your files" }), list), detail);
  await showFiles();
}

async function problemsView(exc, file) {
  const box = h("section", { class: "card", id: "problems", "aria-labelledby": "problems-h" });
  const violations = exc.violations || [];
  box.append(h("h2", { id: "problems-h", text: violations.length ? `${violations.length} problem${violations.length === 1 ? "" : "s"}: the file was not kept` : "The upload was refused" }));
  box.append(h("p", { class: "alert", role: "alert", text: exc.message }));
  if (!violations.length) return box;
  let lines = null;
  try {
    if (file.size <= 64 * 1024 * 1024) lines = (await file.text()).split(/\r?\n/);
  } catch {
    lines = null;
  }
  const view = h("div", { id: "line-view", tabindex: "-1" });
  const showLine = (n) => {
    clear(view);
    const text = lines && n >= 1 && n <= lines.length ? lines[n - 1] : null;
    view.append(h("h3", { text: `Line ${n} of ${file.name}` }),
      text === null ? h("p", { class: "muted", text: "This line is not in the file as read here." }) : h("pre", {}, h("code", { class: "line-content", text: text.length > 20000 ? `${text.slice(0, 20000)}…` : text })));
    view.focus();
  };
  box.append(tableWrap("Problems by line", simpleTable("", ["Line", "Field", "Problem"], violations.map((v) => [
    v.line ? h("a", { href: `#line-${v.line}`, class: "line-link", text: `line ${v.line}`, "aria-label": `Show line ${v.line}`, onclick: (e) => { e.preventDefault(); showLine(v.line); } }) : "—",
    v.field || "—",
    v.description || "",
  ]))), view);
  return box;
}

function showStats(detail, file) {
  clear(detail);
  const stats = file.supervisedTuningDataStats || {};
  detail.append(h("section", { class: "card", id: "file-stats", "aria-labelledby": "stats-h" },
    h("h2", { id: "stats-h", text: `Statistics: ${file.displayName}` }),
    statsView(stats, file)));
  $("#stats-h", detail).setAttribute("tabindex", "-1");
  $("#stats-h", detail).focus();
}

function statsView(stats, file) {
  const truncated = stats.truncatedExampleIndices || [];
  return h("div", {},
    facts([
      file ? ["File", file.name] : null,
      ["Examples", fmt(stats.tuningDatasetExampleCount)],
      ["Billable tokens", fmt(stats.totalBillableTokenCount)],
      ["Steps", fmt(stats.tuningStepCount)],
      ["Truncated examples", `${fmt(stats.totalTruncatedExampleCount || 0)}${truncated.length ? ` (examples ${truncated.slice(0, 20).map((i) => i + 1).join(", ")}${truncated.length > 20 ? ", …" : ""})` : ""}`],
      file ? ["Tokenized with", file.tokenizedWith] : null,
    ]),
    h("div", { class: "grid" },
      distributionView("Input tokens per example", stats.userInputTokenDistribution),
      distributionView("Output (trained) tokens per example", stats.userOutputTokenDistribution)));
}

// A distribution as the API gives it: buckets as a histogram when present, else its quantiles as bars.
function distributionView(title, dist) {
  const box = h("figure", { class: "card dist" }, h("figcaption", {}, h("h3", { text: title })));
  if (!dist) return append(box, [h("p", { class: "muted", text: "none" })]);
  const rows = dist.buckets && dist.buckets.length
    ? dist.buckets.map((b) => [`${fmt(b.left)}–${fmt(b.right)}`, b.count])
    : [["min", dist.min], ["p5", dist.p5], ["median", dist.median], ["mean", dist.mean], ["p95", dist.p95], ["max", dist.max]];
  const top = Math.max(1, ...rows.map((r) => Number(r[1]) || 0));
  const hist = h("div", { class: "hist", role: "list" });
  for (const [label, value] of rows) {
    const bar = h("div", { class: "bar" });
    bar.style.width = `${(100 * (Number(value) || 0)) / top}%`;
    hist.append(h("span", { role: "listitem", text: label }), h("div", { class: "bar-track", "aria-hidden": "true" }, bar), h("span", { class: "num", text: fmt(value) }));
  }
  box.append(hist, h("p", { class: "hint", text: dist.buckets ? "examples per token-count bucket" : `tokens per example; ${fmt(dist.sum)} in all` }));
  return box;
}

// --- new job ------------------------------------------------------------------------------------------------

async function pageNewJob(main) {
  const doc = await schema();
  const create = component(doc, "CreateTuningJobRequest").properties || {};
  const preference = component(doc, "PreferenceHyperParameters").properties || {};
  const hyper = { ...(component(doc, "HyperParameters").properties || {}), ...(preference.beta ? { beta: preference.beta } : {}) };
  const spec = component(doc, "SupervisedTuningSpec").properties || {};
  const [catalog, files] = await Promise.all([models(true), api("/v1/files").then((r) => r.files || [])]);
  const base = catalog.filter((m) => m.source);
  const fields = new Map(); // API field name -> {input, error}
  const formError = h("div", { id: "form-error", "aria-live": "polite" });

  function field(apiName, label, input, hint) {
    const id = input.id;
    const error = h("p", { class: "error", id: `${id}-error` });
    const hintEl = hint ? h("p", { class: "hint", id: `${id}-hint`, text: hint }) : null;
    const described = [hintEl ? `${id}-hint` : "", `${id}-error`, input.getAttribute("aria-describedby") || ""];
    input.setAttribute("aria-describedby", described.join(" ").trim());
    input.dataset.field = apiName;
    fields.set(apiName, { input, error });
    return h("div", { class: "field" }, h("label", { for: id, text: label }), input, hintEl, error);
  }

  const memoryNeed = (m) => {
    const need = m.memoryGiB || {};
    const parts = Object.entries(need).map(([method, gib]) => `${method} about ${fmt(gib, 1)} GiB`);
    return parts.length ? `; rough memory need on a GPU: ${parts.join(", ")}` : "";
  };
  const modelInfo = h("p", { class: "hint", id: "base-model-info" });
  const baseModel = h("input", { id: "base-model", type: "text", list: "base-models", autocomplete: "off", "aria-describedby": "base-model-info" });
  const describeModel = () => {
    const found = base.find((m) => idOf(m.name) === baseModel.value.trim());
    modelInfo.textContent = found
      ? `${found.description || ""} Modalities: ${(found.modalities || []).join(", ")}; context ${fmt(found.contextLength)} tokens${memoryNeed(found)}.`
      : baseModel.value.trim() ? "Not in the catalog: the server looks for a model directory under its data root." : `Empty: the catalog default.`;
  };
  baseModel.addEventListener("input", describeModel);
  describeModel();

  const modes = ((create.tuningMode || {}).anyOf || []).flatMap((s) => s.enum || []);
  const mode = h("select", { id: "tuning-mode" }, modes.map((m) => h("option", { value: m, text: m === "PEFT_ADAPTER" ? "PEFT_ADAPTER (LoRA adapter)" : m === "FULL" ? "FULL (every weight)" : m })));
  const objective = h("select", { id: "objective" }, [
    h("option", { value: "SFT", text: "SFT (supervised examples)" }),
    h("option", { value: "DPO", text: "DPO (preference pairs)" }),
  ]);
  const fileOptions = files.map((f) => h("option", { value: f.name, label: `${f.displayName} (${f.exampleCount} examples)` }));
  const train = h("input", { id: "train-uri", type: "text", list: "dataset-files", autocomplete: "off" });
  const validation = h("input", { id: "validation-uri", type: "text", list: "dataset-files", autocomplete: "off" });
  if (files.length) train.value = files[0].name;
  const displayName = h("input", { id: "display-name", type: "text", maxlength: ((create.tunedModelDisplayName || {}).anyOf || [{}])[0].maxLength });
  const labels = h("input", { id: "labels", type: "text", autocomplete: "off", placeholder: "team=nlp, env=dev" });

  const hyperFields = Object.entries(hyper).map(([name, prop]) => {
    const own = inner(prop);
    const id = `hp-${name}`;
    const label = name.replace(/([A-Z])/g, " $1").replace(/^./, (c) => c.toUpperCase());
    let input;
    const hasDefault = prop.default !== null && prop.default !== undefined;
    let range = "";
    if (own.enum) {
      const auto = hasDefault ? [] : [h("option", { value: "", text: "auto (from the data)" })];
      input = h("select", { id }, [...auto, ...own.enum.map((v) => h("option", { value: String(v), text: String(v) }))]);
      if (hasDefault) input.value = String(prop.default);
      range = `one of ${own.enum.join(", ")}`;
    } else {
      const min = own.minimum ?? own.exclusiveMinimum;
      input = h("input", { id, type: "number", min, max: own.maximum, step: own.type === "integer" ? "1" : "any", placeholder: hasDefault ? String(prop.default) : "auto" });
      range = own.exclusiveMinimum !== undefined ? `more than ${own.exclusiveMinimum}, at most ${own.maximum}` : `${min} to ${own.maximum}`;
    }
    input.dataset.type = own.type || "";
    const about = String(prop.description || "").replace(/\s*\(default [^)]*\)/g, "").replace(/; default from its size\./, ".");
    const hint = `${hasDefault ? `Default ${prop.default}` : "Default: from the data's shape"}; ${range}. ${about}`;
    return { name, input, node: field(`supervisedTuningSpec.hyperParameters.${name}`, label, input, hint), hasDefault };
  });

  const submit = h("button", { type: "submit", text: "Create job" });
  const form = h("form", { id: "job-form", novalidate: true },
    h("section", { class: "card", "aria-labelledby": "what-h" }, h("h2", { id: "what-h", text: "Model and data" }),
      h("div", { class: "fields" },
        h("div", {}, field("baseModel", "Base model", baseModel, null), modelInfo),
        field("tuningMode", "Method", mode, (create.tuningMode || {}).description),
        field("objective", "Objective", objective, "SFT: supervisedTuningSpec. DPO: preferenceOptimizationSpec, on pairs (chosen and rejected answers); beta below.")),
      h("datalist", { id: "base-models" }, base.map((m) => h("option", { value: idOf(m.name), label: m.description || idOf(m.name) }))),
      h("datalist", { id: "dataset-files" }, fileOptions),
      h("div", { class: "fields" },
        field("supervisedTuningSpec.trainingDatasetUri", "Training dataset", train, plain((spec.trainingDatasetUri || {}).description)),
        field("supervisedTuningSpec.validationDatasetUri", "Validation dataset (optional)", validation, "Evaluated at each epoch end, and after tuning (metrics, per-class F1)."))),
    h("section", { class: "card", "aria-labelledby": "hp-h" }, h("h2", { id: "hp-h", text: "Hyperparameters" }),
      h("p", { class: "muted", text: "Defaults and ranges come from the API's schema; a field left empty takes its default." }),
      h("div", { class: "fields" }, hyperFields.map((f) => f.node))),
    h("section", { class: "card", "aria-labelledby": "name-h" }, h("h2", { id: "name-h", text: "Name and labels" }),
      h("div", { class: "fields" },
        field("tunedModelDisplayName", "Tuned model display name", displayName, null),
        field("labels", "Labels", labels, "key=value pairs, comma separated: lowercase letters, digits, - and _."))),
    formError, submit);
  if (!files.length) form.prepend(h("p", { class: "notice" }, "No uploaded files yet: ", h("a", { href: "#/datasets", text: "upload a dataset" }), " or name a path under the server's data root."));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const { input, error } of fields.values()) { input.removeAttribute("aria-invalid"); error.textContent = ""; }
    clear(formError);
    const tuning = { trainingDatasetUri: train.value.trim(), hyperParameters: {} };
    const key = objective.value === "DPO" ? "preferenceOptimizationSpec" : "supervisedTuningSpec";
    const body = { [key]: tuning, labels: {} };
    if (baseModel.value.trim()) body.baseModel = baseModel.value.trim();
    if (mode.value) body.tuningMode = mode.value;
    if (validation.value.trim()) tuning.validationDatasetUri = validation.value.trim();
    if (displayName.value.trim()) body.tunedModelDisplayName = displayName.value.trim();
    for (const f of hyperFields) {
      const raw = f.input.value.trim();
      if (raw === "" || (f.name === "beta" && key !== "preferenceOptimizationSpec")) continue;
      if (f.input.tagName === "SELECT" && f.hasDefault && raw === String(hyper[f.name].default)) continue;
      const number = Number(raw);
      tuning.hyperParameters[f.name] = f.input.tagName === "SELECT" || raw !== "" ? (Number.isNaN(number) ? raw : number) : raw;
    }
    for (const pair of labels.value.split(",").map((p) => p.trim()).filter(Boolean)) {
      const [k, ...rest] = pair.split(/[=:]/);
      body.labels[k.trim()] = rest.join("=").trim();
    }
    submit.disabled = true;
    try {
      const job = await api("/v1/tuningJobs", { method: "POST", json: body, headers: { "Idempotency-Key": crypto.randomUUID() } });
      toast(`Created ${job.name}`);
      location.hash = `#/jobs/${encodeURIComponent(idOf(job.name))}`;
    } catch (exc) {
      showViolations(exc);
    } finally {
      submit.disabled = false;
    }
  });

  function showViolations(exc) {
    const unplaced = [];
    let first = null;
    for (const v of exc.violations || []) {
      const name = String(v.field || "").replace(/ \(.*\)$/, "").replace(/^preferenceOptimizationSpec/, "supervisedTuningSpec");
      let target = null;
      for (const key of fields.keys()) {
        if (name === key || name.startsWith(`${key}.`) || name.startsWith(`${key}[`)) {
          if (!target || key.length > target.length) target = key;
        }
      }
      if (target) {
        const { input, error } = fields.get(target);
        input.setAttribute("aria-invalid", "true");
        error.textContent = error.textContent ? `${error.textContent} ${v.description}` : v.description;
        first = first || input;
      } else {
        unplaced.push(v);
      }
    }
    formError.append(h("div", { class: "alert", role: "alert" },
      h("p", { text: exc.violations && exc.violations.length ? `The server refused the job: ${exc.violations.length} problem${exc.violations.length === 1 ? "" : "s"}, shown next to ${unplaced.length ? "their fields and below" : "their fields"}.` : exc.message }),
      unplaced.length ? h("ul", {}, unplaced.map((v) => h("li", { text: `${v.field}: ${v.description}` }))) : null));
    (first || submit).focus();
  }

  main.append(h("h1", { text: "New tuning job" }), form);
}

// --- jobs list --------------------------------------------------------------------------------------------

const jobsView = { state: "", label: "", tokens: [null] , progress: new Map() };

async function pageJobs(main, signal) {
  const doc = await schema();
  const states = (component(doc, "TuningJob").properties || {}).state?.enum || [];
  const stateSelect = h("select", { id: "filter-state" }, h("option", { value: "", text: "any state" }), states.map((s) => h("option", { value: s, text: s.replace("JOB_STATE_", "") })));
  stateSelect.value = jobsView.state;
  const labelInput = h("input", { id: "filter-label", type: "text", placeholder: "team:nlp", value: jobsView.label });
  const body = h("div", {}, h("p", { class: "muted", text: "Loading…" }));
  const pager = h("div", { class: "pager" });
  const filters = h("form", { class: "card row", id: "job-filters", novalidate: true, role: "search", "aria-label": "Filter jobs" },
    h("div", {}, h("label", { for: "filter-state", text: "State" }), stateSelect),
    h("div", {}, h("label", { for: "filter-label", text: "Label (key:value)" }), labelInput),
    h("button", { type: "submit", text: "Filter" }));
  filters.addEventListener("submit", (e) => {
    e.preventDefault();
    jobsView.state = stateSelect.value;
    jobsView.label = labelInput.value.trim();
    jobsView.tokens = [null];
    load();
  });
  let timer = null;
  signal.addEventListener("abort", () => clearTimeout(timer));

  async function load() {
    clearTimeout(timer);
    const params = new URLSearchParams({ pageSize: String(PAGE_SIZE) });
    if (jobsView.state) params.set("state", jobsView.state);
    if (jobsView.label) params.set("label", jobsView.label);
    const token = jobsView.tokens[jobsView.tokens.length - 1];
    if (token) params.set("pageToken", token);
    let page;
    try {
      page = await api(`/v1/tuningJobs?${params}`, { signal });
    } catch (exc) {
      if (exc.name === "AbortError") return;
      clear(body).append(h("p", { class: "alert", role: "alert", text: exc.message }));
      return;
    }
    const jobs = page.tuningJobs || [];
    await Promise.all(jobs.filter((j) => j.state === "JOB_STATE_RUNNING" || j.state === "JOB_STATE_CANCELLING").map((j) => progressOf(j, signal)));
    clear(body);
    if (!jobs.length) body.append(h("p", { class: "muted" }, "No jobs here. ", h("a", { href: "#/new", text: "Create one" }), "."));
    else {
      body.append(tableWrap("Tuning jobs", simpleTable("", ["Job", "State", "Base model", "Progress", "Created"], jobs.map((j) => [
        jobLink(j), badge(j.state), j.baseModel || "—", progressCell(j),
        h("time", { datetime: j.createTime, title: j.createTime, text: age(j.createTime) }),
      ]))));
    }
    clear(pager);
    const prev = h("button", { type: "button", class: "secondary", text: "Previous page", disabled: jobsView.tokens.length <= 1 });
    const next = h("button", { type: "button", class: "secondary", text: "Next page", disabled: !page.nextPageToken });
    prev.addEventListener("click", () => { jobsView.tokens.pop(); load(); });
    next.addEventListener("click", () => { jobsView.tokens.push(page.nextPageToken); load(); });
    pager.append(prev, h("span", { class: "muted", text: `page ${jobsView.tokens.length}` }), next);
    if (jobs.some((j) => ["JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_CANCELLING"].includes(j.state))) timer = setTimeout(load, 3000);
  }

  main.append(h("div", { class: "row title-row" }, h("h1", { text: "Jobs" }), h("a", { class: "button", href: "#/new", text: "New job" })),
    filters, h("section", { class: "card", "aria-label": "Jobs" }, body, pager));
  await load();
}

async function progressOf(job, signal) {
  const id = idOf(job.name);
  const known = jobsView.progress.get(id) || { after: 0, step: 0, total: 0 };
  for (let round = 0; round < 20; round++) {
    const page = await api(`/v1/tuningJobs/${encodeURIComponent(id)}/events?after=${known.after}&pageSize=1000`, { signal });
    for (const e of page.events || []) {
      known.after = e.id;
      if (e.type === "metrics" && e.data && e.data.total_steps) { known.step = e.data.step; known.total = e.data.total_steps; }
    }
    if ((page.events || []).length < 1000) break;
  }
  jobsView.progress.set(id, known);
}

function progressCell(job) {
  const known = jobsView.progress.get(idOf(job.name));
  let fraction = null;
  if (job.state === "JOB_STATE_SUCCEEDED") fraction = 1;
  else if (job.state === "JOB_STATE_PENDING") fraction = 0;
  else if (known && known.total) fraction = known.step / known.total;
  if (fraction === null) return "—";
  return h("span", { class: "row" }, h("progress", { max: "100", value: String(Math.round(fraction * 100)), "aria-label": `Progress of ${job.tunedModelDisplayName || idOf(job.name)}` }), h("span", { text: `${Math.round(fraction * 100)}%` }));
}

// --- job page ------------------------------------------------------------------------------------------------

function eventsCache(id) {
  try {
    const cached = JSON.parse(sessionStorage.getItem(EVENTS_STORE + id) || "null");
    return cached && Array.isArray(cached.events) ? cached : { lastId: 0, events: [] };
  } catch {
    return { lastId: 0, events: [] };
  }
}

function saveEvents(id, cache) {
  if (cache.events.length > MAX_CACHED_EVENTS) return; // too long to keep: a reload replays the stream from the start
  try {
    sessionStorage.setItem(EVENTS_STORE + id, JSON.stringify(cache));
  } catch {
    sessionStorage.removeItem(EVENTS_STORE + id);
  }
}

function lossChart(container, title, series) {
  // series: [{label, stroke, dash}]
  if (!window.uPlot) {
    container.append(h("p", { class: "muted", text: "The chart library did not load." }));
    return null;
  }
  const width = () => Math.max(260, container.clientWidth - 8);
  const plot = new window.uPlot({
    title,
    width: width(),
    height: 240,
    scales: { x: { time: false } },
    axes: [{ label: "step" }, {}],
    series: [{ label: "step" }, ...series.map((s) => ({ label: s.label, stroke: s.stroke, width: 2, dash: s.dash, spanGaps: true, points: { show: s.points ?? false, size: 6 } }))],
  }, [[], ...series.map(() => [])], container);
  const observer = new ResizeObserver(() => plot.setSize({ width: width(), height: 240 }));
  observer.observe(container);
  return { plot, observer };
}

async function pageJob(main, signal, id) {
  let job = await api(`/v1/tuningJobs/${encodeURIComponent(id)}`, { signal });
  const cache = eventsCache(id);
  const points = { step: [], train_loss: [], eval_loss: [], train_acc: [], eval_acc: [] };
  const timeline = h("ol", { class: "timeline", id: "timeline" });
  const live = h("div", { id: "live" });
  const header = h("div", {});
  const about = h("section", { class: "card", "aria-label": "About this job" });
  const settings = h("div", {}, h("p", { class: "muted", text: "Loading…" }));
  const dataStats = h("div", {});
  const lossBox = h("div", { class: "chart", id: "loss-chart", role: "img", "aria-label": "Training and validation loss by step" });
  const accBox = h("div", { class: "chart", id: "accuracy-chart", role: "img", "aria-label": "Training and validation token accuracy by step" });
  const pointCount = h("p", { class: "muted", id: "point-count", "aria-live": "off" });
  let latest = {};

  main.append(header,
    h("div", { class: "grid" }, about,
      h("section", { class: "card", "aria-labelledby": "progress-h" }, h("h2", { id: "progress-h", text: "Progress" }), live)),
    h("section", { class: "card", "aria-labelledby": "curves-h" }, h("h2", { id: "curves-h", text: "Training curves" }),
      h("div", { class: "grid" }, lossBox, accBox), pointCount),
    h("div", { class: "grid" },
      h("section", { class: "card", "aria-labelledby": "timeline-h" }, h("h2", { id: "timeline-h", text: "State timeline" }), timeline),
      h("section", { class: "card", "aria-labelledby": "settings-h" }, h("h2", { id: "settings-h", text: "Hyperparameters as resolved" }), settings)),
    h("section", { class: "card", "aria-labelledby": "data-h" }, h("h2", { id: "data-h", text: "Data statistics" }), dataStats));

  const loss = lossChart(lossBox, "Loss", [
    { label: "train loss", stroke: "#0b57d0" },
    { label: "validation loss", stroke: "#b3261e", dash: [6, 4], points: true },
  ]);
  const acc = lossChart(accBox, "Token accuracy", [
    { label: "train token accuracy", stroke: "#1d6b35" },
    { label: "validation token accuracy", stroke: "#7a4b00", dash: [6, 4], points: true },
  ]);
  signal.addEventListener("abort", () => { loss?.observer.disconnect(); acc?.observer.disconnect(); });

  function renderHeader() {
    clear(header);
    const ended = ["JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"].includes(job.state);
    const cancel = h("button", { type: "button", class: "danger", id: "cancel-job", text: "Cancel job", disabled: ended || job.state === "JOB_STATE_CANCELLING" });
    cancel.addEventListener("click", async () => {
      if (!window.confirm("Cancel this job? A running job saves a checkpoint and stops.")) return;
      cancel.disabled = true;
      try {
        job = await api(`/v1/tuningJobs/${encodeURIComponent(id)}:cancel`, { method: "POST" });
        toast(`Cancel requested: ${job.state.replace("JOB_STATE_", "")}`);
      } catch (exc) {
        toast(exc.message);
      }
      renderHeader();
    });
    const tuned = job.tunedModel && job.tunedModel.model;
    append(header, [
      h("div", { class: "row title-row" }, h("h1", { text: job.tunedModelDisplayName || idOf(job.name) }), h("span", { id: "job-state" }, badge(job.state)), cancel),
      job.error ? h("div", { class: "alert", role: "alert", id: "job-error" }, h("strong", { text: `Error ${job.error.code}: ` }), job.error.message) : null,
      ]);
    clear(about).append(facts([
        ["Job", job.name],
        ["Base model", job.baseModel],
        ["Method", job.tuningMode],
        ["Objective", job.preferenceOptimizationSpec ? "DPO" : "SFT"],
        ["Training data", (job.preferenceOptimizationSpec || job.supervisedTuningSpec || {}).trainingDatasetUri],
        ["Validation data", (job.preferenceOptimizationSpec || job.supervisedTuningSpec || {}).validationDatasetUri],
        ["Created", job.createTime],
        ["Started", job.startTime],
        ["Ended", job.endTime],
        ["Labels", Object.entries(job.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ")],
        ["Tuned model", tuned ? modelLink(tuned, `${tuned} — evaluation and playground`) : null],
      ]));
  }

  function renderLive() {
    clear(live);
    const m = latest;
    const fraction = job.state === "JOB_STATE_SUCCEEDED" ? 1 : m.total_steps ? m.step / m.total_steps : 0;
    live.append(
      h("progress", { max: "100", value: String(Math.round(fraction * 100)), "aria-label": "Training progress", id: "job-progress" }),
      facts([
        ["Step", m.step !== undefined ? `${fmt(m.step)}${m.total_steps ? ` of ${fmt(m.total_steps)}` : ""}` : "—"],
        ["Epoch", m.epoch !== undefined ? fmt(m.epoch, 2) : "—"],
        ["Tokens per second", fmt(m.tokens_per_second, 1)],
        ["Time left (ETA)", job.state === "JOB_STATE_RUNNING" ? duration(m.eta_seconds) : "—"],
        ["Train loss", fmt(m.train_loss, 4)],
        ["Validation loss", fmt(latest.eval_loss, 4)],
      ]));
  }

  function addEvent(event) {
    if (event.type === "state") {
      timeline.append(h("li", {},
        h("time", { datetime: event.createTime, text: new Date(event.createTime).toLocaleString() }),
        event.data && event.data.state ? badge(event.data.state) : null, " ",
        event.message || ""));
    } else if (event.type === "metrics" && event.data && typeof event.data.step === "number") {
      const d = { ...event.data };
      // a DPO run's accuracy is its preference accuracy (TRL's rewards/accuracies): the same chart
      d.train_token_accuracy ??= d["rewards/accuracies"];
      d.eval_token_accuracy ??= d["eval_rewards/accuracies"];
      const last = points.step.length - 1;
      const isEval = d.eval_loss !== undefined && d.train_loss === undefined;
      if (last >= 0 && points.step[last] === d.step) {
        // an evaluation on a step already plotted: fill its validation values in
        if (d.eval_loss !== undefined) points.eval_loss[last] = d.eval_loss;
        if (d.eval_token_accuracy !== undefined) points.eval_acc[last] = d.eval_token_accuracy;
        if (d.train_loss !== undefined) points.train_loss[last] = d.train_loss;
      } else {
        points.step.push(d.step);
        points.train_loss.push(isEval ? null : d.train_loss ?? null);
        points.eval_loss.push(d.eval_loss ?? null);
        points.train_acc.push(isEval ? null : d.train_token_accuracy ?? null);
        points.eval_acc.push(d.eval_token_accuracy ?? null);
      }
      latest = { ...latest, ...d };
    }
  }

  let drawPending = false;
  function draw() {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(() => {
      drawPending = false;
      loss?.plot.setData([points.step, points.train_loss, points.eval_loss]);
      acc?.plot.setData([points.step, points.train_acc, points.eval_acc]);
      const n = points.step.length;
      pointCount.textContent = n ? `${n} step${n === 1 ? "" : "s"} plotted; last: step ${points.step[n - 1]}, train loss ${fmt(latest.train_loss, 4)}${latest.eval_loss !== undefined ? `, validation loss ${fmt(latest.eval_loss, 4)}` : ""}` : "No steps yet.";
      lossBox.dataset.points = String(n);
      renderLive();
    });
  }

  async function refreshSettings() {
    try {
      const run = await api(`/v1/console/tuningJobs/${encodeURIComponent(id)}`, { signal });
      clear(settings).append(
        facts([
          ["Method", run.tuningMode],
          ...Object.entries(run.hyperParameters || {}).map(([k, v]) => [k, fmt(v, 6)]),
          ["Learning rate", typeof run.learningRate === "number" ? run.learningRate.toExponential(2) : "once the run starts"],
        ]),
        h("h3", { text: "Checkpoint" }),
        run.checkpoint
          ? facts([["Latest", run.checkpoint.name], ["Step", fmt(run.checkpoint.step)], ["Epoch", fmt(run.checkpoint.epoch)], ["Saved", run.checkpoint.createTime]])
          : h("p", { class: "muted", text: job.state === "JOB_STATE_SUCCEEDED" ? "None kept: checkpoints go once the tuned model is written." : "None yet: one is saved at each epoch end and on cancel." }));
    } catch (exc) {
      if (exc.name !== "AbortError") clear(settings).append(h("p", { class: "alert", text: exc.message }));
    }
  }

  async function refreshData() {
    clear(dataStats);
    const stats = job.tuningDataStats && job.tuningDataStats.supervisedTuningDataStats;
    if (stats) {
      dataStats.append(statsView(stats, null));
      return;
    }
    const uri = (job.supervisedTuningSpec || {}).trainingDatasetUri || "";
    if (uri.startsWith("files/")) {
      try {
        const file = await api(`/v1/${uri}`, { signal });
        dataStats.append(h("p", { class: "muted", text: "From the upload's check (the job's own counts come when it ends):" }), statsView(file.supervisedTuningDataStats || {}, file));
        return;
      } catch (exc) {
        if (exc.name === "AbortError") return;
      }
    }
    dataStats.append(h("p", { class: "muted", text: "Counted once the job has run." }));
  }

  window.addEventListener("pagehide", () => saveEvents(id, cache), { signal });
  renderHeader();
  for (const event of cache.events) addEvent(event);
  draw();
  refreshSettings();
  refreshData();

  // follow the stream, resuming from the last event seen (kept across reloads in session storage)
  for (let attempt = 0; !signal.aborted; attempt++) {
    try {
      await readEvents(`/v1/tuningJobs/${encodeURIComponent(id)}/events?alt=sse`, cache.lastId, (eventId, event) => {
        if (event.id <= cache.lastId) return;
        cache.lastId = event.id;
        const keep = { id: event.id, type: event.type, createTime: event.createTime, message: event.message, data: event.data };
        cache.events.push(keep);
        addEvent(keep);
        draw();
        if (event.type === "state") {
          api(`/v1/tuningJobs/${encodeURIComponent(id)}`, { signal }).then((fresh) => { job = fresh; renderHeader(); renderLive(); refreshSettings(); }).catch(() => {});
        }
      }, signal);
      saveEvents(id, cache);
      job = await api(`/v1/tuningJobs/${encodeURIComponent(id)}`, { signal });
      renderHeader();
      renderLive();
      refreshSettings();
      refreshData();
      if (["JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"].includes(job.state)) break;
    } catch (exc) {
      saveEvents(id, cache);
      if (signal.aborted || exc.name === "AbortError") break;
      if (exc.status && exc.status < 500) throw exc;
      await new Promise((resolve) => setTimeout(resolve, Math.min(10000, 1000 * 2 ** Math.min(attempt, 4))));
    }
  }
  saveEvents(id, cache);
}

// --- models --------------------------------------------------------------------------------------------------

async function pageModels(main) {
  const all = await models(true);
  const tuned = all.filter((m) => !m.source);
  const base = all.filter((m) => m.source);
  main.append(h("h1", { text: "Models" }),
    h("section", { class: "card", "aria-labelledby": "tuned-h" }, h("h2", { id: "tuned-h", text: "Tuned models" }),
      tuned.length ? tableWrap("Tuned models", simpleTable("", ["Model", "Base model", "Method", "Created"], tuned.map((m) => [
        modelLink(m.name, m.displayName || m.name), idOf(m.baseModel), m.tuningMode, h("time", { datetime: m.createTime, text: age(m.createTime) }),
      ]))) : h("p", { class: "muted", text: "None yet: a job that succeeds adds its tuned model here." })),
    h("section", { class: "card", "aria-labelledby": "base-h" }, h("h2", { id: "base-h", text: "Base models (catalog)" }),
      tableWrap("Base models", simpleTable("", ["Model", "Modalities", "Context", "GPU memory, LoRA / full (GiB)", "About"], base.map((m) => [
        idOf(m.name), (m.modalities || []).join(", "), fmt(m.contextLength),
        m.memoryGiB ? `${fmt(m.memoryGiB.PEFT_ADAPTER, 1)} / ${fmt(m.memoryGiB.FULL, 1)}` : "", m.description || "",
      ]), [2, 3]))));
}

async function pageModel(main, signal, id) {
  const model = await api(`/v1/models/${encodeURIComponent(id)}`, { signal });
  if (model.source) {
    main.append(h("h1", { text: idOf(model.name) }), h("p", { text: model.description || "" }), h("p", { class: "muted", text: "A base model from the catalog." }));
    return;
  }
  const [evaluation, job, catalog] = await Promise.all([
    api(`/v1/models/${encodeURIComponent(id)}/evaluation`, { signal }).catch((exc) => ({ missing: exc.message })),
    model.tuningJob ? api(`/v1/${model.tuningJob}`, { signal }).catch(() => null) : null,
    models(),
  ]);
  const del = h("button", { type: "button", class: "danger", id: "delete-model", text: "Delete model" });
  del.addEventListener("click", async () => {
    if (!window.confirm(`Delete ${model.displayName || model.name}? Its directory is removed and it stops being served.`)) return;
    del.disabled = true;
    try {
      await api(`/v1/${model.name}`, { method: "DELETE" });
      toast(`${model.name} deleted`);
      location.hash = "#/models";
    } catch (exc) {
      toast(exc.message);
      del.disabled = false;
    }
  });
  main.append(
    h("div", { class: "row title-row" }, h("h1", { text: model.displayName || model.name }), del),
    h("section", { class: "card" }, facts([
      ["Model", model.name],
      ["Tuned from", job ? job.baseModel : idOf(model.baseModel)],
      ["Method", model.tuningMode],
      ["Tuning job", model.tuningJob ? h("a", { href: `#/jobs/${encodeURIComponent(idOf(model.tuningJob))}`, text: model.tuningJob }) : null],
      ["Endpoint", model.endpoint],
    ])),
    evaluationView(evaluation),
    playground(model, job, evaluation, catalog),
    exportView(model, signal),
    snippets(model));
}

// Export to GGUF (llama.cpp) with an Ollama Modelfile: an export job, polled until its files can be downloaded.
function exportView(model, signal) {
  const quant = h("select", { id: "export-quant", "aria-label": "Weight type" },
    ["f16", "q8_0", "q4_0", "q4_k_m"].map((q) => h("option", { value: q, text: q })));
  const ollama = h("input", { type: "checkbox", id: "export-ollama", checked: true });
  const adapter = h("input", { type: "checkbox", id: "export-adapter" });
  const button = h("button", { type: "button", id: "export-model", text: "Export to GGUF" });
  const status = h("div", { id: "export-status", "aria-live": "polite" });
  const box = h("section", { class: "card", id: "export", "aria-labelledby": "export-h" },
    h("h2", { id: "export-h", text: "Export" }),
    h("p", { class: "muted", text: "One GGUF file for llama.cpp (and an Ollama Modelfile) with the chat template and stop tokens this model was tuned with." }),
    h("div", { class: "row" }, h("label", { for: "export-quant", text: "Weights " }), quant,
      h("label", {}, ollama, " Ollama Modelfile"),
      model.tuningMode === "PEFT_ADAPTER" ? h("label", {}, adapter, " LoRA adapter only") : null, button),
    status);
  button.addEventListener("click", async () => {
    button.disabled = true;
    clear(status);
    try {
      const body = { quant: quant.value, ollama: ollama.checked, adapterOnly: adapter.checked };
      let job = await api(`/v1/${model.name}:export`, { method: "POST", json: body, signal });
      const bar = h("progress", { max: "100", value: "0", "aria-label": "Export progress" });
      const what = h("span", { class: "muted" });
      status.append(h("div", { class: "row" }, bar, what));
      while (!["JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"].includes(job.state)) {
        await new Promise((resolve) => setTimeout(resolve, 1000));
        job = await api(`/v1/${job.name}`, { signal });
        bar.value = String(Math.round(100 * ((job.progress || {}).fraction || 0)));
        what.textContent = (job.progress || {}).message || job.state;
      }
      clear(status);
      if (job.state !== "JOB_STATE_SUCCEEDED") {
        status.append(h("p", { class: "error", text: `Export ${job.state.replace("JOB_STATE_", "").toLowerCase()}: ${(job.error || {}).message || ""}` }));
        return;
      }
      status.append(h("p", { text: `Exported in ${fmt(job.exportSeconds, 3)} s:` }), h("ul", {}, (job.files || []).map((f) =>
        h("li", {}, h("button", { type: "button", class: "link", text: `${f.name} (${(Number(f.sizeBytes) / 1e6).toFixed(1)} MB)`, onclick: () => download(f) })))));
    } catch (exc) {
      if (exc.name !== "AbortError") status.append(h("p", { class: "error", text: exc.message }));
    } finally {
      button.disabled = false;
    }
  });
  return box;
}

// A download with the API key (a plain link would not send it).
async function download(file) {
  const response = await fetch(new URL(file.downloadUri).pathname, { headers: authHeaders(), credentials: "omit" });
  if (!response.ok) {
    toast(`Download failed: HTTP ${response.status}`);
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  const link = h("a", { href: url, download: file.name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function evaluationView(evaluation) {
  const box = h("section", { class: "card", id: "evaluation", "aria-labelledby": "eval-h" }, h("h2", { id: "eval-h", text: "Evaluation" }));
  if (evaluation.missing || evaluation.error) {
    box.append(h("p", { class: "muted", text: evaluation.missing || `The evaluation did not finish: ${evaluation.error}` }));
    return box;
  }
  const metrics = evaluation.metrics || {};
  const task = evaluation.task || {};
  const scalar = Object.entries(metrics).filter(([k, v]) => k !== "task" && (typeof v === "number" || typeof v === "string"));
  box.append(h("p", { class: "muted", text: `Task: ${task.kind || "?"}${task.labels && task.labels.length ? ` (${task.labels.length} labels)` : ""}; measured on the job's validation set after tuning.` }),
    tableWrap("Metrics", simpleTable("", ["Metric", "Value"], scalar.map(([k, v]) => [k.replace(/_/g, " "), typeof v === "number" && v <= 1 && v >= 0 && /accuracy|f1|precision|recall|rate|match/.test(k) ? pct(v) : fmt(v, 3)]), [1])));
  const perClass = metrics.per_class || {};
  const labels = Object.keys(perClass);
  if (labels.length) {
    box.append(h("h3", { text: "Per-class F1" }), tableWrap("Per-class F1", simpleTable("", ["Class", "F1", "", "Precision", "Recall", "Support"], labels.map((label) => {
      const c = perClass[label];
      const bar = h("div", { class: "bar" });
      bar.style.width = `${Math.round((c.f1 || 0) * 100)}%`;
      return [label, fmt(c.f1, 3), h("div", { class: "bar-track", "aria-hidden": "true" }, bar), fmt(c.precision, 3), fmt(c.recall, 3), fmt(c.support)];
    }), [1, 3, 4, 5])));
  }
  const confusion = metrics.confusion || [];
  if (confusion.length) {
    const targets = [...new Set(confusion.map((c) => c.target))].sort();
    const predicted = [...new Set([...targets, ...confusion.map((c) => c.predicted)])];
    const count = new Map(confusion.map((c) => [`${c.target}\u0000${c.predicted}`, c.count]));
    const top = Math.max(1, ...confusion.map((c) => c.count));
    const table = h("table", { id: "confusion" }, h("caption", { text: "Confusion matrix: rows are the expected class, columns the answer" }),
      h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "expected \\ answered" }), predicted.map((p) => h("th", { scope: "col", text: p })))),
      h("tbody", {}, targets.map((t) => h("tr", {}, h("th", { scope: "row", text: t }), predicted.map((p) => {
        const n = count.get(`${t}\u0000${p}`) || 0;
        const cell = h("td", { class: "heat", text: String(n) });
        if (n) {
          const strength = n / top;
          cell.style.background = t === p ? `rgba(29, 107, 53, ${0.15 + 0.35 * strength})` : `rgba(164, 22, 26, ${0.12 + 0.3 * strength})`;
        }
        return cell;
      })))));
    box.append(h("h3", { text: "Confusion matrix" }), tableWrap("Confusion matrix", table));
  }
  const worst = (evaluation.errorAnalysis || {}).worst_classes || [];
  if (worst.length) {
    box.append(h("h3", { text: "Worst classes" }), h("ol", { id: "worst-classes" }, worst.map((w) => h("li", {},
      h("strong", { text: w.label }), ` — ${w.errors} wrong of ${w.support}`,
      h("ul", {}, (w.examples || []).map((ex) => h("li", {}, `line ${ex.line}: `, h("q", { text: ex.input }), " → answered ", h("code", { text: ex.output }), ", expected ", h("code", { text: ex.target }))))))));
  }
  return box;
}

function playground(model, job, evaluation, catalog) {
  const labels = ((evaluation && evaluation.task) || {}).labels || [];
  const baseId = job ? job.baseModel : idOf(model.baseModel);
  const servable = catalog.filter((m) => m.source).map((m) => idOf(m.name));
  const others = catalog.filter((m) => !m.source && m.name !== model.name);
  const baseSelect = h("select", { id: "pg-base-model" },
    h("optgroup", { label: "Base models (catalog)" }, servable.map((m) => h("option", { value: m, text: m }))),
    others.length ? h("optgroup", { label: "Your other tuned models" }, others.map((m) => h("option", { value: idOf(m.name), text: m.displayName || idOf(m.name) }))) : null);
  if (servable.includes(baseId)) baseSelect.value = baseId;
  const prompt = h("textarea", { id: "pg-prompt", rows: "3" });
  const examples = ((evaluation && evaluation.errorAnalysis) || {}).worst_classes || [];
  prompt.value = examples.length && examples[0].examples && examples[0].examples[0] ? examples[0].examples[0].input : "";
  const bestPrompt = h("textarea", { id: "pg-base-system", rows: "5" });
  bestPrompt.value = labels.length ? `Classify the message. Answer with exactly one of these labels and nothing else: ${labels.join(", ")}.` : "You are a helpful assistant. Answer briefly.";
  const shortPrompt = h("textarea", { id: "pg-tuned-system", rows: "2" });
  const maxTokens = h("input", { id: "pg-max-tokens", type: "number", min: "1", max: "8192", value: "32" });
  const inPrice = h("input", { id: "pg-input-price", type: "number", min: "0", step: "any", value: "0.15" });
  const outPrice = h("input", { id: "pg-output-price", type: "number", min: "0", step: "any", value: "0.60" });
  const baseOut = h("div", { class: "answer", id: "pg-base-answer", "aria-live": "polite" });
  const tunedOut = h("div", { class: "answer", id: "pg-tuned-answer", "aria-live": "polite" });
  const send = h("button", { type: "submit", text: "Send to both" });
  const baseNote = servable.includes(baseId) ? null
    : h("p", { class: "notice", text: `This model was tuned from ${baseId}, a model directory the server does not serve by name (it serves catalog and tuned models); choose the model to compare with.` });
  const form = h("form", { id: "playground-form", novalidate: true },
    h("div", { class: "field" }, h("label", { for: "pg-prompt", text: "Message (the user's turn)" }), prompt),
    h("div", { class: "side-by-side" },
      h("div", { class: "card" }, h("h3", { text: "Base model with its best prompt" }), baseNote,
        h("div", { class: "field" }, h("label", { for: "pg-base-model", text: "Model to compare with" }), baseSelect),
        h("div", { class: "field" }, h("label", { for: "pg-base-system", text: "System prompt (the best prompt)" }), bestPrompt),
        h("h4", { text: "Answer" }), baseOut),
      h("div", { class: "card" }, h("h3", { text: "Tuned model with a short prompt" }),
        h("div", { class: "field" }, h("label", { for: "pg-tuned-system", text: "System prompt (short; may be empty)" }), shortPrompt),
        h("h4", { text: "Answer" }), tunedOut)),
    h("div", { class: "fields" },
      h("div", { class: "field" }, h("label", { for: "pg-max-tokens", text: "Max output tokens" }), maxTokens),
      h("div", { class: "field" }, h("label", { for: "pg-input-price", text: "Input price ($ per million tokens)" }), inPrice),
      h("div", { class: "field" }, h("label", { for: "pg-output-price", text: "Output price ($ per million tokens)" }), outPrice)),
    send);

  async function run(target, system, out) {
    clear(out).append(h("p", { class: "muted", text: "waiting for the model…" }));
    const body = { contents: [{ role: "user", parts: [{ text: prompt.value }] }], generationConfig: { maxOutputTokens: Number(maxTokens.value) || 32, temperature: 0 } };
    if (system.trim()) body.systemInstruction = { parts: [{ text: system }] };
    const started = performance.now();
    try {
      const answer = await api(`/v1/models/${encodeURIComponent(target)}:generateContent`, { method: "POST", json: body });
      const ms = performance.now() - started;
      const usage = answer.usageMetadata || {};
      const text = ((((answer.candidates || [])[0] || {}).content || {}).parts || []).map((p) => p.text || "").join("");
      const cost = ((usage.promptTokenCount || 0) * Number(inPrice.value || 0) + (usage.candidatesTokenCount || 0) * Number(outPrice.value || 0)) / 1e6 * 1000;
      clear(out).append(h("pre", {}, h("code", { class: "answer-text", text: text || "(empty answer)" })),
        facts([["Prompt tokens", fmt(usage.promptTokenCount)], ["Output tokens", fmt(usage.candidatesTokenCount)], ["Latency", `${Math.round(ms)} ms`], ["Cost of 1,000 such requests", `$${cost.toFixed(4)}`]]));
    } catch (exc) {
      clear(out).append(h("p", { class: "alert", role: "alert", text: exc.message }));
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    send.disabled = true;
    await Promise.all([
      baseSelect.value ? run(baseSelect.value, bestPrompt.value, baseOut) : Promise.resolve(clear(baseOut).append(h("p", { class: "muted", text: "No catalog model to compare with." }))),
      run(idOf(model.name), shortPrompt.value, tunedOut),
    ]);
    send.disabled = false;
  });
  return h("section", { class: "card", id: "playground", "aria-labelledby": "pg-h" }, h("h2", { id: "pg-h", text: "Playground: base model vs tuned model" }),
    h("p", { class: "muted", text: "One message, two candidates, side by side: prompt tokens, latency and cost for each." }), form);
}

function snippets(model) {
  const origin = location.origin;
  const id = idOf(model.name);
  const body = JSON.stringify({ contents: [{ role: "user", parts: [{ text: "my card never arrived" }] }] });
  const items = [
    ["curl", `curl -s ${origin}/v1/models/${id}:generateContent \\\n  -H "Authorization: Bearer $TUNERY_API_KEY" -H "Content-Type: application/json" \\\n  -d '${body}'`],
    ["Python SDK (tunery)", `import os\nimport tunery\nfrom tunery import GenerativeModel\n\ntunery.init(api_endpoint="${origin}", api_key=os.environ["TUNERY_API_KEY"])\nmodel = GenerativeModel("models/${id}")\nprint(model.generate_content("my card never arrived").text)`],
    ["google-genai", `import os\nfrom google import genai\nfrom google.genai import types\n\nclient = genai.Client(api_key=os.environ["TUNERY_API_KEY"], http_options=types.HttpOptions(base_url="${origin}"))\nreply = client.models.generate_content(model="models/${id}", contents="my card never arrived")\nprint(reply.text)`],
    ["openai", `import os\nfrom openai import OpenAI\n\nclient = OpenAI(base_url="${origin}/v1", api_key=os.environ["TUNERY_API_KEY"])\nreply = client.chat.completions.create(model="${id}", messages=[{"role": "user", "content": "my card never arrived"}])\nprint(reply.choices[0].message.content)`],
  ];
  return h("section", { class: "card", id: "snippets", "aria-labelledby": "snip-h" }, h("h2", { id: "snip-h", text: "Call it from your code" }),
    h("p", { class: "muted", text: "Set TUNERY_API_KEY to your key first; the snippets never contain it." }),
    items.map(([name, code]) => {
      const codeEl = h("code", { text: code });
      const copy = h("button", { type: "button", class: "secondary", text: `Copy ${name}` });
      copy.addEventListener("click", async () => {
        try {
          await navigator.clipboard.writeText(code);
          toast(`${name} snippet copied`);
        } catch {
          const range = document.createRange();
          range.selectNodeContents(codeEl);
          getSelection().removeAllRanges();
          getSelection().addRange(range);
          toast("Selected: press Ctrl+C to copy");
        }
      });
      return h("div", { class: "snippet" }, h("h3", { text: name }), copy, h("pre", {}, codeEl));
    }));
}

// --- compare reports ---------------------------------------------------------------------------------------

function pageReports(main) {
  const input = h("input", { id: "report-file", type: "file", accept: ".html,text/html" });
  const holder = h("div", { id: "report-holder" });
  const open = (file) => {
    clear(holder);
    if (!file) return;
    if (file.size > 64 * 1024 * 1024) {
      holder.append(h("p", { class: "alert", role: "alert", text: `${file.name} is over 64 MiB; open it in a browser tab instead.` }));
      return;
    }
    file.text().then((text) => {
      // sandbox with no allowances: no scripts, no forms, an opaque origin that cannot reach this page or its key
      const frame = h("iframe", { class: "report", sandbox: "", referrerpolicy: "no-referrer", title: `Compare report: ${file.name}` });
      frame.srcdoc = text;
      holder.append(h("p", { class: "muted", text: `${file.name}: shown in a sandbox (no scripts run; nothing is sent to the server).` }), frame);
    });
  };
  input.addEventListener("change", () => open(input.files[0]));
  const drop = h("div", { class: "drop", id: "report-drop" }, h("label", { for: "report-file", text: "A report.html from 'tunery compare': drop it here, or choose it" }), input);
  for (const name of ["dragenter", "dragover"]) drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); open(e.dataTransfer.files[0]); });
  main.append(h("h1", { text: "Compare reports" }),
    h("section", { class: "card" },
      h("p", { text: "'tunery compare --output DIR' writes DIR/report.html: quality, tokens, latency and cost of each candidate, with plots. Open one here; it stays on this machine." }),
      drop),
    holder);
}

// --- start -----------------------------------------------------------------------------------------------------

$("#signout").addEventListener("click", () => signOut("Signed out."));
window.addEventListener("hashchange", route);

async function start() {
  const kept = sessionStorage.getItem(KEY_STORE);
  if (kept) {
    state.key = kept;
    try {
      await models(true);
      signedIn();
      return;
    } catch {
      state.key = null;
      sessionStorage.removeItem(KEY_STORE);
    }
  }
  renderSignIn("");
}

start();
