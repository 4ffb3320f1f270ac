// A Server-Sent Events parser over a fetch() response body (EventSource cannot POST).
// Follows the WHATWG "event stream interpretation" rules: lines end in CRLF, LF or CR;
// a blank line dispatches; lines starting with ":" are comments (the service's `: ping`).

export async function* readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  const lines = new LineSplitter();
  let event = emptyEvent();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      for (const line of lines.push(value)) {
        if (line === "") {
          if (event.data.length) yield { ...event, data: event.data.join("\n") };
          event = emptyEvent();
        } else if (line.startsWith(":")) {
          yield { type: "comment", data: line.slice(1).trim(), id: null };
        } else {
          addField(event, line);
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function emptyEvent() {
  return { type: "message", data: [], id: null };
}

function addField(event, line) {
  const colon = line.indexOf(":");
  const name = colon === -1 ? line : line.slice(0, colon);
  let value = colon === -1 ? "" : line.slice(colon + 1);
  if (value.startsWith(" ")) value = value.slice(1);
  if (name === "event") event.type = value;
  else if (name === "data") event.data.push(value);
  else if (name === "id" && !value.includes("\0")) event.id = value;
}

class LineSplitter {
  constructor() {
    this.buffer = "";
    this.afterCR = false;
  }

  push(chunk) {
    // A CR ending one chunk and an LF starting the next are one line break, not two.
    if (this.afterCR && chunk.startsWith("\n")) chunk = chunk.slice(1);
    this.afterCR = chunk.endsWith("\r");
    const parts = (this.buffer + chunk).split(/\r\n|\r|\n/);
    this.buffer = parts.pop();
    return parts;
  }
}
