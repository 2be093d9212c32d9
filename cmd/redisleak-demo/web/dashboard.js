// The dashboard: one EventSource on the stats topic, a canvas chart drawn by
// hand, and tables. No libraries, nothing loaded from elsewhere.
(function () {
  'use strict';
  const WINDOW_MS = 120 * 1000;
  const SERIES = [
    {key: 'total', color: '#8a94a6', width: 2},
    {key: 'inUse', color: '#2f6fde', width: 2},
    {key: 'longLived', color: '#1f9d6b', width: 2.5},
    {key: 'leaked', color: '#d92d20', width: 3, fill: 'rgba(217,45,32,.10)'},
  ];
  const body = document.body;
  const canvas = document.getElementById('chart');
  const stateBadge = document.getElementById('conn-state');
  let points = [];
  let last = null;
  let received = 0;
  let scheduled = false;

  function $(id) { return document.getElementById(id); }
  function text(id, v) { const el = $(id); if (el) el.textContent = v; }
  // Durations: "1.5s" and "45s" up to 90 s, then "2m 5s", and "1h 3m"
  // from an hour on.
  function fmtMs(ms) {
    if (ms <= 90000) return ms >= 10000 ? (ms / 1000).toFixed(0) + 's' : (ms / 1000).toFixed(1) + 's';
    const s = Math.floor(ms / 1000);
    if (s < 3600) return Math.floor(s / 60) + 'm ' + (s % 60) + 's';
    return Math.floor(s / 3600) + 'h ' + Math.floor((s % 3600) / 60) + 'm';
  }
  // "1 connection", "2 connections".
  function plural(n, one, many) { return n + ' ' + (n === 1 ? one : many); }
  // count sets a number and the noun after it (data-one / data-many).
  function count(id, n) {
    text(id, n);
    const noun = $(id + '-noun');
    if (noun) noun.textContent = n === 1 ? noun.dataset.one : noun.dataset.many;
  }
  // The badge says "connecting…" until the first stats event, "live" from
  // then on, "reconnecting…" after an error until the next event.
  function setState(label, cls) {
    stateBadge.textContent = label;
    stateBadge.className = 'badge' + (cls ? ' ' + cls : '');
    body.dataset.state = label;
  }
  function cell(tr, v, cls) {
    const td = document.createElement('td');
    if (v instanceof Node) td.appendChild(v); else td.textContent = v;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }
  function pill(label, cls) {
    const s = document.createElement('span');
    s.className = 'state ' + cls;
    s.textContent = label;
    return s;
  }
  function emptyRow(tbody, n, msg) {
    const tr = document.createElement('tr');
    tr.className = 'empty';
    const td = document.createElement('td');
    td.colSpan = n;
    td.textContent = msg;
    tr.appendChild(td);
    tbody.appendChild(tr);
  }

  function onStats(s) {
    received++;
    if (stateBadge.textContent !== 'live') setState('live', 'good');
    last = s;
    points.push({t: s.t, total: s.total, inUse: s.inUse, longLived: s.longLived, leaked: s.leaked});
    const cut = s.t - WINDOW_MS;
    while (points.length && points[0].t < cut) points.shift();
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(render);
    }
  }

  function render() {
    scheduled = false;
    const s = last;
    if (!s) return;
    text('v-total', s.total);
    text('v-inUse', s.inUse);
    text('v-longLived', s.longLived);
    text('v-leaked', s.leaked);
    text('v-reported', s.leaksReported);
    text('v-auto', s.autoDetection ? s.autoLongLived : 'off');
    $('v-auto').parentNode.classList.toggle('off', !s.autoDetection);
    $('v-leaked').parentNode.classList.toggle('alarm', s.leaked > 0);

    const lt = $('leaks').tBodies[0];
    lt.textContent = '';
    if (!s.leaks.length) emptyRow(lt, 5, 'none');
    for (const l of s.leaks) {
      const tr = document.createElement('tr');
      tr.className = 'leak';
      cell(tr, '#' + l.connId);
      cell(tr, l.kind);
      cell(tr, l.owner || '—');
      cell(tr, fmtMs(l.heldForMs) + ' / ' + fmtMs(l.maxHoldMs), 'nowrap');
      cell(tr, l.site || 'unknown', 'site');
      lt.appendChild(tr);
    }

    // Holders long-lived by behaviour: "off" is not "none".
    const at = $('auto').tBodies[0];
    const autos = s.autoHolders || [];
    at.textContent = '';
    if (!s.autoDetection) emptyRow(at, 6, 'automatic detection off (run with -auto-long-lived)');
    else if (!autos.length) emptyRow(at, 6, 'automatic detection on: no holder is long-lived by behaviour right now');
    for (const a of autos) {
      const tr = document.createElement('tr');
      cell(tr, '#' + a.connId);
      cell(tr, a.kind);
      cell(tr, a.owner || '—');
      cell(tr, fmtMs(a.heldForMs), 'nowrap');
      cell(tr, fmtMs(a.idleForMs), 'nowrap');
      const site = document.createElement('div');
      site.textContent = a.site || 'unknown';
      const hint = document.createElement('div');
      hint.className = 'hint';
      hint.textContent = a.hint;
      const both = document.createDocumentFragment();
      both.appendChild(site);
      both.appendChild(hint);
      cell(tr, both, 'site');
      at.appendChild(tr);
    }
    // The naive mode: the tracker's own verdict beside the naive one.
    const verdict = $('auto-verdict');
    verdict.hidden = !s.tracker;
    if (s.tracker) {
      verdict.textContent = 'The tracker\'s own verdict, beside the naive detector\'s above: ' +
        s.tracker.longLived + ' long-lived (' + s.tracker.autoLongLived + ' by behaviour), ' +
        s.tracker.leaked + ' leaked, ' + plural(s.tracker.leaksReported, 'leak', 'leaks') + ' reported.';
    }

    const ht = $('holders').tBodies[0];
    ht.textContent = '';
    if (!s.holders.length) emptyRow(ht, 5, 'nothing held right now');
    for (const h of s.holders) {
      const tr = document.createElement('tr');
      if (h.leaked > 0) cell(tr, pill('leaked', 'leaked'));
      else if (h.longLived) cell(tr, pill(h.by ? 'long-lived · ' + h.by : 'long-lived', h.by === 'auto' ? 'auto' : 'longlived'));
      else cell(tr, pill('in use', 'short'));
      cell(tr, h.kind);
      cell(tr, h.owner || '—');
      cell(tr, plural(h.count, 'connection', 'connections'), 'nowrap');
      cell(tr, fmtMs(h.maxHeldMs));
      ht.appendChild(tr);
    }

    count('j-signups', s.jobs.signups);
    count('j-completed', s.jobs.completed);
    count('j-failed', s.jobs.failed);
    count('j-attempts', s.jobs.attemptsFailed);
    text('q-waiting', s.queue.waiting);
    text('q-active', s.queue.active);
    text('q-delayed', s.queue.delayed);
    count('s-clients', s.sseClients);
    if (s.keyspace.indexOf('on') === 0) count('k-expired', s.jobs.sessionsExpired);
    else text('k-expired', 'off');

    drawChart();
    body.dataset.points = String(received);
    body.dataset.last = String(s.t);
  }

  function niceStep(max) {
    const raw = max / 5;
    for (const step of [1, 2, 5, 10, 20, 25, 50, 100, 200, 500, 1000]) if (step >= raw) return step;
    return Math.ceil(raw);
  }

  function drawChart() {
    const dpr = window.devicePixelRatio || 1;
    const cssW = canvas.clientWidth || 1100, cssH = canvas.clientHeight || 260;
    if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
      canvas.width = Math.round(cssW * dpr);
      canvas.height = Math.round(cssH * dpr);
    }
    const g = canvas.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, cssW, cssH);
    const L = 40, R = 12, T = 10, B = 24;
    const W = cssW - L - R, H = cssH - T - B;
    const now = points.length ? points[points.length - 1].t : Date.now();
    // Two minutes, or less just after start (at least 30 s).
    const span = Math.min(WINDOW_MS, Math.max(30000, points.length ? now - points[0].t : 0));
    const t0 = now - span;
    let ymax = 4;
    for (const p of points) ymax = Math.max(ymax, p.total, p.inUse);
    const step = niceStep(ymax);
    ymax = Math.ceil(ymax / step) * step;
    const x = (t) => L + (t - t0) / span * W;
    const y = (v) => T + H - v / ymax * H;

    g.font = '11px system-ui, sans-serif';
    g.fillStyle = '#667085';
    g.strokeStyle = '#e4e7ec';
    g.lineWidth = 1;
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    for (let v = 0; v <= ymax; v += step) {
      g.beginPath();
      g.moveTo(L, Math.round(y(v)) + .5);
      g.lineTo(L + W, Math.round(y(v)) + .5);
      g.stroke();
      g.fillText(String(v), L - 6, y(v));
    }
    g.textAlign = 'center';
    g.textBaseline = 'top';
    const tick = [5, 10, 20, 30].find((st) => span / 1000 / st <= 6.5) || 30;
    for (let s = Math.floor(span / 1000 / tick) * tick; s >= 0; s -= tick) {
      g.fillText(s === 0 ? 'now' : '-' + s + 's', x(now - s * 1000), T + H + 6);
    }
    if (points.length === 0) {
      g.textAlign = 'center';
      g.textBaseline = 'middle';
      g.fillText('waiting for the first stats event…', L + W / 2, T + H / 2);
      return;
    }
    g.save();
    g.beginPath();
    g.rect(L, T - 4, W, H + 8);
    g.clip();
    for (const sr of SERIES) {
      g.beginPath();
      let prev = null;
      for (const p of points) {
        const px = x(p.t), py = y(p[sr.key]);
        if (prev === null) g.moveTo(px, py);
        else { g.lineTo(px, prev); g.lineTo(px, py); }
        prev = py;
      }
      g.lineTo(x(now), prev);
      if (sr.fill) {
        g.save();
        g.lineTo(x(now), y(0));
        g.lineTo(x(points[0].t), y(0));
        g.closePath();
        g.fillStyle = sr.fill;
        g.fill();
        g.restore();
        // redraw the line without the closing path
        g.beginPath();
        prev = null;
        for (const p of points) {
          const px = x(p.t), py = y(p[sr.key]);
          if (prev === null) g.moveTo(px, py);
          else { g.lineTo(px, prev); g.lineTo(px, py); }
          prev = py;
        }
        g.lineTo(x(now), prev);
      }
      g.strokeStyle = sr.color;
      g.lineWidth = sr.width;
      g.lineJoin = 'round';
      g.stroke();
    }
    g.restore();
  }

  // The first connection starts from the oldest stats event the server
  // still remembers, so the chart starts with up to two minutes of history
  // replayed by the SSE manager; a reconnecting EventSource sends its
  // Last-Event-ID instead.
  const since = body.dataset.since;
  const es = new EventSource('/events?topic=pool' + (since ? '&lastEventId=' + encodeURIComponent(since) : ''));
  es.addEventListener('stats', (e) => {
    try { onStats(JSON.parse(e.data)); } catch (err) { console.error(err); }
  });
  // The history no longer reaches back to the cursor: start the chart over.
  es.addEventListener('reset', () => { points = []; drawChart(); });
  // An open stream is not yet data: the badge turns "live" with the first
  // event (onStats). data-stream tells tests that the stream is open.
  es.onopen = () => { body.dataset.stream = 'open'; };
  es.onerror = () => { body.dataset.stream = 'error'; setState('reconnecting…', 'bad'); };

  $('leak-btn').addEventListener('click', () => { fetch('/api/report').catch(() => {}); });
  window.addEventListener('resize', () => { if (last) drawChart(); });
  drawChart();
})();
