// Pulling a model from the Hugging Face hub into the model store (an admin key): POST /api/v1/models/pull streams
// the pull's progress as server-sent events, shown as a bar for the whole and one per file. Uses app.js's helpers.
"use strict";

const mb = (bytes) => `${(bytes / 1e6).toFixed(1)} MB`;

function renderPull(pull) {
  const message = pull.message ? ` — ${pull.message}` : "";
  $("pull-state").className = `state state-${pull.state}`;
  $("pull-state").textContent =
    `${pull.name}: ${pull.state}${message} (${mb(pull.bytes_done)} of ${mb(pull.bytes_total)})`;
  $("pull-bar").style.width = `${pull.bytes_total ? (100 * pull.bytes_done) / pull.bytes_total : 0}%`;
  $("pull-files").replaceChildren(...pull.files.map((f) => {
    const used = el("div", { className: "used" });
    used.style.width = `${f.size ? (100 * f.done) / f.size : 100}%`;
    const row = el("li", {}, el("span", { textContent: `${f.path} (${mb(f.size)})` }), el("div", { className: "bar" }, used));
    row.dataset.file = f.path;
    return row;
  }));
}

async function startPull(event) {
  event.preventDefault();
  const repo = $("pull-repo").value.trim();
  if (!repo) return;
  const body = {
    repo,
    name: $("pull-name").value.trim() || null,
    quantize: $("pull-quantize").checked,
    q_bits: Number($("pull-bits").value),
    q_group_size: Number($("pull-group").value),
  };
  $("pull-error").textContent = "";
  $("pull-start").disabled = true;
  try {
    const response = await fetch("/api/v1/models/pull", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
    });
    if (!response.ok) throw await failure(response);
    for await (const { data } of sseEvents(response)) {
      renderPull(data);
      if (data.state === "failed") throw new Error(data.message);
    }
  } catch (error) {
    $("pull-error").textContent = `pull: ${error.message}`;
  } finally {
    $("pull-start").disabled = false;
  }
}

$("pull-form").addEventListener("submit", startPull);
