// Node peer of the sse package's tests: one EventSource (the `eventsource`
// npm package, pinned in package-lock.json) on the URL given as argument.
// It prints one JSON line per callback on stdout: open, error (with the
// readyState), message (what onmessage receives), reset and heartbeat.
import { EventSource } from 'eventsource';

const url = process.argv[2];
if (!url) {
  console.error('usage: node client.mjs URL');
  process.exit(2);
}
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const es = new EventSource(url);
es.onopen = () => out({ kind: 'open' });
es.onerror = (e) => out({ kind: 'error', state: es.readyState, message: String(e && e.message || '') });
es.onmessage = (e) => out({ kind: 'message', id: e.lastEventId, data: e.data, type: e.type });
es.addEventListener('reset', (e) => out({ kind: 'reset', id: e.lastEventId, data: e.data }));
es.addEventListener('heartbeat', (e) => out({ kind: 'heartbeat', id: e.lastEventId }));
// The test ends the process by closing stdin (or killing it).
process.stdin.on('end', () => { es.close(); process.exit(0); });
process.stdin.resume();
