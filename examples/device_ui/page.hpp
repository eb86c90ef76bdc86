// page.hpp - device_ui's one page: HTML, CSS and plain JavaScript in a raw string literal,
// compiled into the program (a device has no CDN and should need no files at run time).
//
// What the script does:
//   - keeps a WebSocket to /ws open and shows what the server pushes on it, one JSON object
//     per message: "status" (once a second), "progress", "stored", "failed" (an upload);
//   - reconnects when it closes - a restart closes it with 1012 (Service Restart), a stop
//     with 1001 (Going Away) - after a short pause that doubles while the server is away;
//   - uploads the chosen file with fetch() (multipart/form-data, field "firmware"), staying
//     on the page: the progress comes from the server, counted as the bytes reach its disk;
//   - POSTs /restart when the button is pressed.
#ifndef RESTARTABLE_SERVER_EXAMPLES_DEVICE_UI_PAGE_HPP
#define RESTARTABLE_SERVER_EXAMPLES_DEVICE_UI_PAGE_HPP

namespace device_ui {

inline const char* const page = R"HTML(<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>device</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 16px system-ui, sans-serif; margin: 2em; max-width: 42em; }
  dl { display: grid; grid-template-columns: max-content auto; gap: .4em 1.5em; }
  dd { margin: 0; font-weight: bold; font-variant-numeric: tabular-nums; }
  .down { color: #b00; }
  progress { width: 100%; }
  #sha256, #answer { font-family: monospace; word-break: break-all; }
</style></head>
<body>
<h1>device</h1>
<dl>
  <dt>link</dt><dd id="link">connecting</dd>
  <dt>run</dt><dd id="run">-</dd>
  <dt>uptime</dt><dd id="uptime">-</dd>
  <dt>requests served</dt><dd id="requests">-</dd>
</dl>
<button id="restart">restart the server</button>

<h2>firmware</h2>
<form id="upload">
  <input type="file" id="file" name="firmware" required>
  <button id="send">upload</button>
</form>
<p><progress id="bar" max="1" value="0"></progress><br><span id="progress">no upload yet</span></p>
<p>stored: <span id="sha256">-</span><br>answer: <span id="answer">-</span></p>

<script>
const $ = (id) => document.getElementById(id);
const show = (id, text) => { $(id).textContent = text; };
const mib = (n) => (n / 1048576).toFixed(1) + ' MiB';

// What the server pushes, by message type.
const on = {
  status(m) {
    const restarts = m.run - 1;
    show('run', m.run + (restarts ? ' (' + restarts + (restarts === 1 ? ' restart)' : ' restarts)') : ''));
    show('uptime', m.uptime_s + ' s');
    show('requests', m.requests);
  },
  progress(m) {  // total: the request's Content-Length (the file plus the form's framing)
    if (m.total > 0) $('bar').value = m.bytes / m.total;
    show('progress', mib(m.bytes) + (m.total > 0 ? ' of ' + mib(m.total) : '') + ' stored');
  },
  stored(m) {
    $('bar').value = 1;
    show('progress', m.bytes + ' bytes stored');
    show('sha256', 'sha256 ' + m.sha256);
  },
  failed(m) { show('progress', 'upload failed: ' + m.error); },
};

// The live link. Whatever closed it, try again after `pause`: 250 ms at first (a restart
// has the new run accepting already), doubling up to 5 s while nobody answers.
let pause = 250;
function connect() {
  const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
  ws.onopen = () => { pause = 250; show('link', 'live'); $('link').className = ''; };
  ws.onmessage = (e) => { const m = JSON.parse(e.data); if (on[m.type]) on[m.type](m); };
  ws.onclose = (e) => {
    show('link', (e.code === 1012 ? 'the server restarts' : 'closed (' + e.code + ')') + ', reconnecting');
    $('link').className = 'down';
    setTimeout(connect, pause);
    pause = Math.min(pause * 2, 5000);
  };
}
connect();

$('upload').onsubmit = async (e) => {
  e.preventDefault();  // stay here: leaving the page would close the WebSocket
  show('progress', 'uploading');
  show('sha256', '-');
  show('answer', '-');
  try {
    const r = await fetch('/firmware', { method: 'POST', body: new FormData($('upload')) });
    show('answer', r.status + ' ' + (await r.text()).trim());
  } catch (err) {
    show('answer', 'failed: ' + err);
  }
};
$('restart').onclick = () => fetch('/restart', { method: 'POST' });
</script>
</body></html>
)HTML";

}  // namespace device_ui

#endif  // RESTARTABLE_SERVER_EXAMPLES_DEVICE_UI_PAGE_HPP
