// The zmq-scheduler dashboard: reads /events (server-sent events, over fetch so that it can
// send the token) and draws each snapshot; the task view and the buttons call the REST API.
"use strict";

const TOKEN_KEY = "zmqs-token";
const STATUSES = ["pending", "running", "completed", "failed", "cancelled"];
let reconnectDelay = 1000;
let streamAbort = null;

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function headers() {
  const h = { "Accept": "application/json" };
  if (token()) h["Authorization"] = "Bearer " + token();
  return h;
}

// One call to the API: {status, body} with the body parsed as JSON when it is some.
async function api(method, path) {
  const response = await fetch(path, { method, headers: headers(), cache: "no-store" });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = { description: text }; }
  return { status: response.status, body };
}

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function taskLink(id, label) { return el("a", { href: "#task/" + id, "data-task": id }, label || id); }

function ago(iso) {
  if (!iso) return "";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return seconds.toFixed(0) + " s ago";
  if (seconds < 3600) return (seconds / 60).toFixed(0) + " min ago";
  return new Date(iso).toLocaleString();
}

function notice(text) {
  const node = $("notice");
  node.textContent = text || "";
  node.hidden = !text;
}

function setConnection(text, state) {
  const node = $("connection");
  node.textContent = text;
  node.className = "state " + (state || "");
}

// -- the stream -------------------------------------------------------------------------

async function listen() {
  if (streamAbort) streamAbort.abort();
  const abort = new AbortController();
  streamAbort = abort;
  try {
    const response = await fetch("/events", { headers: headers(), signal: abort.signal, cache: "no-store" });
    if (response.status === 401 || response.status === 403) {
      const body = await response.json().catch(() => ({}));
      setConnection("token needed", "down");
      notice((body.description || "the API refused the token") + ": enter a token above.");
      return;  // wait for a token
    }
    if (!response.ok || !response.body) throw new Error("the API answered " + response.status);
    setConnection("live", "live");
    notice("");
    reconnectDelay = 1000;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        handleEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  } catch (error) {
    if (abort.signal.aborted) return;
    setConnection("reconnecting", "down");
    reconnectDelay = Math.min(reconnectDelay * 2, 10000);
  }
  if (streamAbort === abort) setTimeout(listen, reconnectDelay);
}

function handleEvent(block) {
  let type = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;  // a heartbeat
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
  }
  if (type === "snapshot" && data.length) draw(JSON.parse(data.join("\n")));
}

// -- drawing a snapshot -----------------------------------------------------------------

function draw(snap) {
  if (snap.error) { notice(snap.error); setConnection("broker down", "down"); return; }
  notice("");
  setConnection("live", "live");
  drawCounts(snap);
  drawHandlers(snap.handlers);
  drawChart($("chart-completed"), snap.throughput ? snap.throughput.completed : []);
  drawChart($("chart-failed"), snap.throughput ? snap.throughput.failed : []);
  drawWorkers(snap);
  drawRunning(snap);
  drawFailures(snap.failures || []);
}

function drawCounts(snap) {
  const counts = snap.tasks || {};
  const box = $("counts");
  box.replaceChildren(...STATUSES.map((status) =>
    el("div", { class: "card " + status, id: "count-" + status }, el("b", {}, counts[status] || 0), status)));
  if (snap.unservable) box.append(el("div", { class: "card", id: "count-unservable" }, el("b", {}, snap.unservable), "no worker can run"));
  $("source").textContent = snap.source === "stats" ? "" : "counts by handler need a broker with stats";
}

function drawHandlers(handlers) {
  const body = $("handlers").tBodies[0];
  const rows = Object.entries(handlers || {}).sort(([a], [b]) => a.localeCompare(b)).map(([name, counts]) =>
    el("tr", { "data-handler": name }, el("td", {}, name), el("td", {}, counts.pending || 0), el("td", {}, counts.running || 0)));
  body.replaceChildren(...rows);
  $("handlers").hidden = rows.length === 0;
}

function drawChart(svg, series) {
  const ns = "http://www.w3.org/2000/svg";
  const width = 450, height = 60;
  const top = Math.max(1, ...series);
  const step = series.length ? width / series.length : width;
  const bars = series.map((n, i) => {
    const rect = document.createElementNS(ns, "rect");
    const h = (n / top) * (height - 4);
    rect.setAttribute("x", (i * step).toFixed(1));
    rect.setAttribute("y", (height - h).toFixed(1));
    rect.setAttribute("width", Math.max(1, step - 1).toFixed(1));
    rect.setAttribute("height", h.toFixed(1));
    const title = document.createElementNS(ns, "title");
    title.textContent = n + " in 10 s, " + ((series.length - 1 - i) * 10) + " s ago";
    rect.append(title);
    return rect;
  });
  svg.replaceChildren(...bars);
  svg.setAttribute("data-total", String(series.reduce((a, b) => a + b, 0)));
}

function drawWorkers(snap) {
  const w = snap.workers || {};
  const slots = w.slots || {};
  $("worker-summary").textContent = (w.online || 0) + " online, " + (w.draining || 0) + " draining, slots "
    + (slots.used || 0) + "/" + (slots.total || 0) + (snap.more_workers ? " (the first 100 listed)" : "");
  const rows = (snap.worker_list || []).map((worker) => {
    const button = el("button", { type: "button", class: "drain" }, worker.draining ? "Resume" : "Drain");
    button.addEventListener("click", () => drain(worker.id, !worker.draining));
    const used = (worker.running || []).length;
    return el("tr", { "data-worker": worker.id, class: worker.status },
      el("td", {}, worker.id), el("td", { class: "worker-status" }, worker.status), el("td", {}, worker.kind),
      el("td", {}, worker.slots === null ? used : used + "/" + worker.slots),
      el("td", {}, (worker.handlers || []).join(", ")), el("td", {}, (worker.tags || []).join(", ")),
      el("td", {}, ago(worker.last_seen)), el("td", { class: "worker-draining" }, worker.draining ? "yes" : ""), el("td", {}, button));
  });
  $("workers").querySelector("tbody").replaceChildren(...rows);
}

function drawRunning(snap) {
  const rows = (snap.running || []).map((task) => el("tr", { "data-task": task.id },
    el("td", {}, taskLink(task.id, task.name || task.id)), el("td", {}, task.handler), el("td", {}, task.worker_id || ""),
    el("td", {}, task.attempts), el("td", {}, ago(task.started_at))));
  if (snap.more_running) rows.push(el("tr", {}, el("td", { colSpan: 5, class: "note" }, "… and more")));
  $("running").querySelector("tbody").replaceChildren(...rows);
}

function drawFailures(failures) {
  const rows = failures.map((task) => el("tr", { "data-task": task.id },
    el("td", {}, taskLink(task.id, task.name || task.id)), el("td", {}, task.handler),
    el("td", {}, ago(task.completed_at)), el("td", { class: "error" }, task.error || "")));
  $("failures").querySelector("tbody").replaceChildren(...rows);
}

// -- the task view ------------------------------------------------------------------------

// Args and results travel as base64: shown as JSON when they are, else as text, else bytes.
function decoded(b64) {
  if (b64 === null || b64 === undefined) return "(none)";
  const binary = atob(b64);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  let text;
  try { text = new TextDecoder("utf-8", { fatal: true }).decode(bytes); } catch (e) {
    return "(" + bytes.length + " bytes, not text) base64: " + b64;
  }
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch (e) { return text; }
}

function why(waiting) {
  if (!waiting) return "";
  if (waiting.reason === "dependencies") return "waits for its dependencies: " + (waiting.tasks || []).join(", ");
  if (waiting.reason === "back-off") return "waits to retry, at " + waiting.ready_at;
  return "waits: " + waiting.reason + (waiting.detail ? " (" + waiting.detail + ")" : "");
}

async function showTask(id, message) {
  $("task-id").value = id;
  const { status, body } = await api("GET", "/tasks/" + encodeURIComponent(id));
  const view = $("task-view");
  view.hidden = false;
  if (status !== 200) {
    $("task-title").textContent = id;
    $("task-status").textContent = "";
    $("task-message").textContent = (body && body.description) || ("the API answered " + status);
    $("cancel").hidden = $("retry").hidden = true;
    for (const part of ["task-args", "task-result", "task-error"]) $(part).textContent = "";
    return;
  }
  const task = body;
  view.setAttribute("data-task", task.id);
  $("task-title").textContent = (task.name ? task.name + " " : "") + task.id;
  $("task-status").textContent = task.status;
  $("task-status").className = "status " + task.status;
  $("task-message").textContent = message || why(task.waiting_for);
  const fields = [["handler", task.handler], ["priority", task.priority], ["attempts", task.attempts],
    ["max retries", task.max_retries], ["worker", task.worker_id], ["created", task.created_at],
    ["started", task.started_at], ["finished", task.completed_at], ["requires", (task.requires || []).join(", ")]];
  $("task-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v === null ? "" : v)]));
  $("task-args").textContent = decoded(task.args);
  $("task-result").textContent = decoded(task.result);
  $("task-error").textContent = (task.error || "") + (task.traceback ? "\n\n" + task.traceback : "");
  const links = (ids, none) => ids && ids.length ? ids.map((d) => el("li", {}, taskLink(d))) : [el("li", { class: "note" }, none)];
  $("task-dependencies").replaceChildren(...links(task.dependencies, "none"));
  // A task may have millions of dependents: the broker lists the first 100 and says if there are more.
  const dependents = links(task.dependents, task.dependents === undefined ? "not listed by this broker" : "none");
  if (task.more_dependents) dependents.push(el("li", { class: "note", id: "more-dependents" }, "… and more"));
  $("task-dependents").replaceChildren(...dependents);
  $("task-leases").tBodies[0].replaceChildren(...(task.leases || []).map((lease) => el("tr", {},
    el("td", {}, lease.attempt), el("td", {}, lease.worker_id), el("td", {}, lease.started_at || ""),
    el("td", {}, lease.ended_at || ""), el("td", {}, lease.outcome || "running"), el("td", { class: "error" }, lease.error || ""))));
  $("cancel").hidden = !(task.status === "pending" || task.status === "running");
  $("retry").hidden = !(task.status === "failed" || task.status === "cancelled");
}

async function act(method, path, done) {
  const { status, body } = await api(method, path);
  if (status >= 200 && status < 300) return done(body);
  const text = (body && body.description) || ("the API answered " + status);
  if (status === 404 || status === 405) notice(method + " " + path + ": " + text + " (does this API have it?)");
  else notice(method + " " + path + ": " + text);
  return null;
}

async function cancelTask() {
  const id = $("task-view").getAttribute("data-task");
  await act("DELETE", "/tasks/" + encodeURIComponent(id), () => showTask(id, "cancelled"));
}

async function retryTask() {
  const id = $("task-view").getAttribute("data-task");
  await act("POST", "/tasks/" + encodeURIComponent(id) + "/retry", () => showTask(id, "to run again"));
}

async function drain(workerId, on) {
  const path = "/workers/" + encodeURIComponent(workerId) + "/drain";
  await act(on ? "POST" : "DELETE", path, () => notice(""));
}

function route() {
  const match = location.hash.match(/^#task\/(.+)$/);
  if (match) showTask(decodeURIComponent(match[1]));
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = token();
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    listen();
    route();
  });
  $("task-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("task-id").value.trim();
    if (id) location.hash = "#task/" + encodeURIComponent(id);
  });
  $("cancel").addEventListener("click", cancelTask);
  $("retry").addEventListener("click", retryTask);
  window.addEventListener("hashchange", route);
  route();
  listen();
});
