// The operator's dashboard: plain JavaScript against the server's own endpoints, with the key the operator
// typed sent as `Authorization: Bearer` on every call. Polls every POLL_MS; nothing is computed server-side
// for it that an API client could not ask for too.
"use strict";

const POLL_MS = 2000;
const GB = 1024 ** 3;
const $ = (id) => document.getElementById(id);
let apiKey = localStorage.getItem("mlx-api-key") || "";
let models = [];
let chatHistory = [];
let chatAbort = null;
let lastMetrics = null;
const liveSeries = [];

function headers(extra = {}) {
  return apiKey ? { ...extra, Authorization: `Bearer ${apiKey}` } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = text; }
  if (!response.ok) {
    const error = body && body.error ? (body.error.message || JSON.stringify(body.error)) : text;
    throw new Error(`${response.status}: ${error}`);
  }
  return body;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

const gb = (bytes) => `${(bytes / GB).toFixed(2)} GB`;

// -- key -------------------------------------------------------------------------------------------------

$("api-key").value = apiKey;
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  apiKey = $("api-key").value.trim();
  localStorage.setItem("mlx-api-key", apiKey);
  $("key-state").textContent = apiKey ? "key set" : "no key";
  refresh();
});
$("key-state").textContent = apiKey ? "key set" : "no key";

// -- models and memory -----------------------------------------------------------------------------------

async function refreshModels() {
  try {
    const [list, memory] = await Promise.all([api("/v1/models"), api("/api/v1/models/memory/usage")]);
    models = list.data;
    renderModels(memory);
    $("models-error").textContent = "";
  } catch (error) {
    $("models-error").textContent = `models: ${error.message}`;
  }
}

function renderModels(memory) {
  const budget = memory.budget_gb || 1;
  $("memory-used").style.width = `${(100 * memory.used_gb) / budget}%`;
  $("memory-reserved").style.width = `${(100 * memory.reserved_gb) / budget}%`;
  $("memory-text").textContent =
    `used ${memory.used_gb.toFixed(2)} GB + reserved ${memory.reserved_gb.toFixed(2)} GB ` +
    `of ${budget.toFixed(2)} GB budget — ${memory.available_gb.toFixed(2)} GB free`;
  // Several hosts: each one's budget, or why it is down (a single host is "local" and says nothing more).
  const hosts = Object.entries(memory.hosts || {}).filter(([name]) => name !== "local");
  $("memory-hosts").textContent = hosts.map(([name, h]) => h.up
    ? `${name}: ${h.total_gb.toFixed(2)} of ${h.budget_gb.toFixed(2)} GB used`
    : `${name}: down (${h.error})`).join(" · ");
  const tbody = $("models").querySelector("tbody");
  tbody.replaceChildren(...models.map((m) => {
    const detail = memory.models[m.id] || {};
    const loaded = ["ready", "starting", "stopping"].includes(m.state);
    const load = el("button", { className: "load small", textContent: "Load", disabled: loaded });
    const unload = el("button", { className: "unload small secondary", textContent: "Unload", disabled: !loaded });
    load.addEventListener("click", () => modelAction(m.id, "load", load));
    unload.addEventListener("click", () => modelAction(m.id, "unload", unload));
    const memoryText = loaded ? `${detail.charged_gb.toFixed(2)} GB (resident ${detail.resident_gb.toFixed(2)} GB)` : "–";
    const row = el("tr", {},
      el("td", { textContent: m.id + (m.aliases.length ? ` (${m.aliases.join(", ")})` : "") }),
      el("td", { textContent: m.type }),
      el("td", { className: `state state-${m.state}`, textContent: m.state }),
      el("td", { className: "hosts", textContent: Object.entries(m.hosts || {}).map(([h, st]) => `${h} ${st}`).join(", ") }),
      el("td", { className: "pid", textContent: detail.pid || "–" }),
      el("td", { className: "memory", textContent: memoryText }),
      el("td", { textContent: loaded ? detail.in_flight : "–" }),
      el("td", {}, load, " ", unload));
    row.dataset.model = m.id;
    return row;
  }));
  const select = $("chat-model");
  const chosen = select.value;
  select.replaceChildren(...models.filter((m) => m.state !== "failed").map((m) =>
    el("option", { value: m.id, textContent: `${m.id} (${m.state})` })));
  if (chosen && models.some((m) => m.id === chosen)) select.value = chosen;
  updateImageInput();
  fillModels($("stt-model"), "stt");
  fillModels($("tts-model"), "tts");
}

function fillModels(select, type) {
  const chosen = select.value;
  select.replaceChildren(...models.filter((m) => m.type === type && m.state !== "failed").map((m) =>
    el("option", { value: m.id, textContent: `${m.id} (${m.state})` })));
  if (chosen && models.some((m) => m.id === chosen)) select.value = chosen;
}

async function modelAction(id, action, button) {
  button.disabled = true;
  button.textContent = action === "load" ? "Loading…" : "Unloading…";
  try {
    // JSON, even without a body: development mode refuses POSTs that a cross-site page could send.
    await api(`/api/v1/models/${encodeURIComponent(id)}/${action}`, {
      method: "POST", headers: { "Content-Type": "application/json" },
    });
    $("models-error").textContent = "";
  } catch (error) {
    $("models-error").textContent = `${action} ${id}: ${error.message}`;
  }
  refresh();
}

// -- live figures from /metrics (counter deltas between two polls) ----------------------------------------

// Sums of each metric's samples that belong to model requests (a `model` label that is set): the dashboard's
// own polls would otherwise dominate the request rate and the mean latency.
function parseMetrics(text) {
  const models = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/);
    if (!match) continue;
    const [, name, labels = "", raw] = match;
    if (/model="[^"]/.test(labels)) models[name] = (models[name] || 0) + Number(raw);
  }
  return models;
}

async function refreshLive() {
  try {
    const response = await fetch("/metrics", { headers: headers() });
    if (!response.ok) throw new Error(`${response.status}`);
    const now = { at: performance.now(), m: parseMetrics(await response.text()) };
    if (lastMetrics) {
      const dt = (now.at - lastMetrics.at) / 1000;
      const d = (name) => (now.m[name] || 0) - (lastMetrics.m[name] || 0);
      const tps = d("mlx_server_completion_tokens_total") / dt;
      const requests = d("mlx_server_http_requests_total");
      const latencyCount = d("mlx_server_http_request_duration_seconds_count");
      const ttftCount = d("mlx_server_time_to_first_token_seconds_count");
      $("live-tps").textContent = tps.toFixed(1);
      $("live-rps").textContent = (requests / dt).toFixed(2);
      if (latencyCount > 0) $("live-latency").textContent =
        `${(1000 * d("mlx_server_http_request_duration_seconds_sum") / latencyCount).toFixed(0)} ms`;
      if (ttftCount > 0) $("live-ttft").textContent =
        `${(1000 * d("mlx_server_time_to_first_token_seconds_sum") / ttftCount).toFixed(0)} ms`;
      liveSeries.push(tps);
      if (liveSeries.length > 120) liveSeries.shift();
      drawChart();
    }
    lastMetrics = now;
  } catch (error) {
    $("live-tps").textContent = "?";
  }
}

function drawChart() {
  const canvas = $("live-chart");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const max = Math.max(1, ...liveSeries);
  ctx.strokeStyle = "#2563eb";
  ctx.lineWidth = 2;
  ctx.beginPath();
  liveSeries.forEach((v, i) => {
    const x = (i / 119) * canvas.width;
    const y = canvas.height - 4 - (v / max) * (canvas.height - 8);
    i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
  });
  ctx.stroke();
  ctx.fillStyle = "#6b7280";
  ctx.fillText(`tok/s, peak ${max.toFixed(1)}`, 6, 12);
}

async function refreshSystem() {
  try {
    const s = await api("/system/stats");
    const acc = s.accelerator;
    const accText = acc.memory_total_bytes ? `${acc.backend} ${gb(acc.memory_total_bytes)}` : `${acc.backend} (no device memory figure)`;
    $("system").textContent =
      `CPU ${s.cpu.percent.toFixed(0)}% of ${s.cpu.logical_cores} cores · RAM ${gb(s.memory.used_bytes)} / ` +
      `${gb(s.memory.total_bytes)} · disk ${s.disk.percent.toFixed(0)}% · accelerator ${accText} · MLX ${acc.mlx_version}`;
  } catch (error) {
    $("system").textContent = `system stats: ${error.message}`;
  }
}

async function refreshReadiness() {
  const pill = $("readiness");
  try {
    const response = await fetch("/api/v1/health/ready", { headers: headers() });
    const body = await response.json();
    pill.textContent = body.status || response.status;
    pill.className = `pill ${body.status}`;
  } catch {
    pill.textContent = "unreachable";
    pill.className = "pill not_ready";
  }
}

// -- activity --------------------------------------------------------------------------------------------

async function refreshActivity() {
  try {
    const body = await api("/api/activity-logs?limit=50");
    $("activity").querySelector("tbody").replaceChildren(...body.data.map((e) => el("tr", {},
      el("td", { textContent: new Date(e.time).toLocaleTimeString() }),
      el("td", { textContent: e.service }),
      el("td", { textContent: `${e.method} ${e.path}` }),
      el("td", { textContent: e.model || "–" }),
      el("td", { textContent: e.error ? `${e.status} ${e.error}` : e.status }),
      el("td", { textContent: `${e.latency_ms.toFixed(0)} ms` }),
      el("td", { textContent: tokensOrAudio(e) }),
      el("td", { className: "preview", textContent: e.preview, title: e.preview }))));
    $("activity-error").textContent = "";
  } catch (error) {
    $("activity-error").textContent = `activity: ${error.message}`;
  }
}

function tokensOrAudio(e) {
  if (e.audio_seconds) return `${e.audio_seconds.toFixed(1)} s audio` + (e.real_time_factor ? ` (RTF ${e.real_time_factor})` : "");
  return e.completion_tokens ? `${e.prompt_tokens} → ${e.completion_tokens}` : "–";
}

$("activity-clear").addEventListener("click", async () => {
  try {
    await api("/api/activity-logs", { method: "DELETE" });
    refreshActivity();
  } catch (error) {
    $("activity-error").textContent = `clear: ${error.message}`;
  }
});

// -- chat playground -------------------------------------------------------------------------------------

function isVision(id) {
  const model = models.find((m) => m.id === id);
  return Boolean(model && /vision|vlm|multimodal/i.test(model.type));
}

function updateImageInput() {
  $("chat-image").hidden = !isVision($("chat-model").value);
}
$("chat-model").addEventListener("change", updateImageInput);

function readImage(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function sendChat() {
  const text = $("chat-input").value.trim();
  const model = $("chat-model").value;
  if (!text || !model) return;
  const image = !$("chat-image").hidden && $("chat-image").files[0];
  const content = image
    ? [{ type: "text", text }, { type: "image_url", image_url: { url: await readImage(image) } }]
    : text;
  chatHistory.push({ role: "user", content });
  $("chat-log").append(el("div", { className: "turn user", textContent: `you: ${text}` }));
  $("chat-input").value = "";
  $("chat-output").textContent = "";
  $("chat-error").textContent = "";
  $("chat-send").disabled = true;
  $("chat-stop").disabled = false;
  chatAbort = new AbortController();
  const started = performance.now();
  let reply = "";
  let firstAt = null;
  let usage = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      signal: chatAbort.signal,
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({
        model, messages: chatHistory, stream: true, stream_options: { include_usage: true },
        max_tokens: Number($("chat-max-tokens").value), temperature: Number($("chat-temperature").value),
      }),
    });
    if (!response.ok) throw await failure(response);
    for await (const { data: chunk } of sseEvents(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        firstAt = firstAt || performance.now();
        reply += delta.content;
        $("chat-output").textContent = reply;
      }
    }
    chatHistory.push({ role: "assistant", content: reply });
    $("chat-log").append(el("div", { className: "turn assistant", textContent: `${model}: ${reply}` }));
    $("chat-output").textContent = reply;
    const seconds = (performance.now() - started) / 1000;
    $("chat-stats").textContent = usage
      ? `${usage.completion_tokens} tokens in ${seconds.toFixed(1)} s, first after ${((firstAt - started) / 1000).toFixed(2)} s`
      : "";
  } catch (error) {
    if (error.name !== "AbortError") $("chat-error").textContent = error.message;
    if (reply) chatHistory.push({ role: "assistant", content: reply });
    else chatHistory.pop();
  } finally {
    $("chat-send").disabled = false;
    $("chat-stop").disabled = true;
    chatAbort = null;
    refresh();
  }
}

$("chat-send").addEventListener("click", sendChat);
$("chat-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.metaKey || event.ctrlKey)) sendChat();
});
$("chat-stop").addEventListener("click", () => chatAbort && chatAbort.abort());
$("chat-clear").addEventListener("click", () => {
  chatHistory = [];
  $("chat-log").replaceChildren();
  $("chat-output").textContent = "";
});

// -- audio: upload a file, see the text; type text, hear it ----------------------------------------------

async function transcribe() {
  const file = $("stt-file").files[0];
  const model = $("stt-model").value;
  if (!file || !model) { $("audio-error").textContent = "choose a transcription model and an audio file"; return; }
  const form = new FormData();
  form.append("file", file);
  form.append("model", model);
  form.append("response_format", "verbose_json");
  $("stt-send").disabled = true;
  $("stt-output").textContent = "transcribing…";
  $("audio-error").textContent = "";
  const started = performance.now();
  try {
    const body = await api("/v1/audio/transcriptions", { method: "POST", body: form });
    $("stt-output").textContent = body.text;
    const seconds = (performance.now() - started) / 1000;
    $("stt-stats").textContent = `${body.duration.toFixed(1)} s of audio in ${seconds.toFixed(1)} s`;
  } catch (error) {
    $("stt-output").textContent = "";
    $("audio-error").textContent = `transcription: ${error.message}`;
  } finally {
    $("stt-send").disabled = false;
  }
}

async function speak() {
  const input = $("tts-input").value.trim();
  const model = $("tts-model").value;
  if (!input || !model) { $("audio-error").textContent = "choose a speech model and type some text"; return; }
  const body = { model, input, response_format: $("tts-format").value };
  if ($("tts-voice").value.trim()) body.voice = $("tts-voice").value.trim();
  $("tts-send").disabled = true;
  $("audio-error").textContent = "";
  const started = performance.now();
  try {
    const response = await fetch("/v1/audio/speech", {
      method: "POST", body: JSON.stringify(body), headers: headers({ "Content-Type": "application/json" }),
    });
    if (!response.ok) {
      const text = await response.text();
      let message = text;
      try { message = JSON.parse(text).error.message; } catch { /* not JSON: keep the text */ }
      throw new Error(`${response.status}: ${message}`);
    }
    const audio = $("tts-audio");
    if (audio.src) URL.revokeObjectURL(audio.src);
    audio.src = URL.createObjectURL(await response.blob());
    audio.hidden = false;
    audio.play().catch(() => {});  // autoplay may be refused: the controls are there
    $("tts-stats").textContent = `${((performance.now() - started) / 1000).toFixed(1)} s`;
  } catch (error) {
    $("audio-error").textContent = `speech: ${error.message}`;
  } finally {
    $("tts-send").disabled = false;
  }
}

$("stt-send").addEventListener("click", transcribe);
$("tts-send").addEventListener("click", speak);

// -- API reference ---------------------------------------------------------------------------------------

let examplesFor = null;

function renderExamples() {
  const base = window.location.origin;
  const model = (models[0] && models[0].id) || "MODEL";
  if (examplesFor === model) return;  // re-rendering would reset a "Copied" button
  examplesFor = model;
  const auth = "-H 'Authorization: Bearer $API_KEY'";
  const examples = [
    ["Chat (streaming)", `curl -N ${base}/v1/chat/completions ${auth} -H 'Content-Type: application/json' -d '{
  "model": "${model}", "stream": true, "max_tokens": 64,
  "messages": [{"role": "user", "content": "What is the capital of France?"}]
}'`],
    ["Python (openai SDK)", `from openai import OpenAI

client = OpenAI(base_url="${base}/v1", api_key="YOUR_KEY")
reply = client.chat.completions.create(
    model="${model}", messages=[{"role": "user", "content": "Hello"}], max_tokens=64)
print(reply.choices[0].message.content)`],
    ["Transcribe / speak", `curl ${base}/v1/audio/transcriptions ${auth} -F file=@speech.mp3 -F model=whisper -F response_format=srt
curl ${base}/v1/audio/speech ${auth} -H 'Content-Type: application/json' \\
  -d '{"model": "kokoro", "input": "Hello there.", "response_format": "mp3"}' -o hello.mp3`],
    ["Models and memory", `curl ${base}/v1/models ${auth}\ncurl ${base}/api/v1/models/memory/usage ${auth}`],
    ["Load / unload a model", `curl -X POST ${base}/api/v1/models/${model}/load ${auth}\ncurl -X POST ${base}/api/v1/models/${model}/unload ${auth}`],
    ["Pull a model from the hub", `curl -N ${base}/api/v1/models/pull ${auth} -H 'Content-Type: application/json' -d '{
  "repo": "mlx-community/Qwen3-0.6B-4bit", "name": "qwen3-0.6b"
}'`],
    ["Aliases", `curl -X POST ${base}/api/v1/aliases ${auth} -H 'Content-Type: application/json' -d '{"alias": "gpt-4*", "model": "${model}"}'\ncurl ${base}/api/v1/aliases ${auth}`],
    ["Health", `curl ${base}/api/v1/health          # liveness\ncurl ${base}/api/v1/health/ready    # readiness: supervisor, worker pings, Redis`],
    ["Metrics and system", `curl ${base}/metrics                # Prometheus text format\ncurl ${base}/system/stats ${auth}`],
    ["Activity log", `curl ${base}/api/activity-logs?limit=20 ${auth}\ncurl -X DELETE ${base}/api/activity-logs ${auth}   # admin key`],
  ];
  $("api-examples").replaceChildren(...examples.map(([title, code]) => {
    const copy = el("button", { className: "secondary small", textContent: "Copy" });
    copy.addEventListener("click", async () => {
      await navigator.clipboard.writeText(code).catch(() => {});
      copy.textContent = "Copied";
      setTimeout(() => { copy.textContent = "Copy"; }, 1200);
    });
    return el("div", { className: "example" }, el("h3", {}, title, copy), el("pre", { textContent: code }));
  }));
}

// -- polling ---------------------------------------------------------------------------------------------

async function refresh() {
  await Promise.all([refreshModels(), refreshReadiness(), refreshActivity(), refreshSystem(), refreshLive()]);
  renderExamples();
}

refresh();
setInterval(refresh, POLL_MS);
