// What the dashboard's streaming calls share (chat in app.js, pulls in pull.js): reading server-sent events from a
// fetch Response, and the message of an error response.
"use strict";

// The events of a server-sent event stream (a fetch Response), each as {event, data} with `data` parsed.
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ") && line !== "data: [DONE]") yield { event, data: JSON.parse(line.slice(6)) };
      }
    }
  }
}

// An error response's message: the API's own error body when there is one.
async function failure(response) {
  const body = await response.json().catch(() => ({}));
  return new Error(`${response.status}: ${body.error ? body.error.message : response.statusText}`);
}
