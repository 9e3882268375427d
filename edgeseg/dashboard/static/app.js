// edgeseg dashboard: the live stream, statistics, zones and events from Server-Sent Events, and
// the controls. With two cameras or more: a camera selector, a grid of every camera (each tile a
// frame fetched every GRID_PERIOD_MS, holding no stream slot), and a table of each camera's figures.
// No libraries and no requests anywhere but this server: the device may have no internet.
(() => {
  'use strict';

  // -- access: a ?token= in the address is kept for this tab and removed from the address bar --
  const params = new URLSearchParams(location.search);
  let token = sessionStorage.getItem('edgeseg-token') || '';
  if (params.has('token')) {
    token = params.get('token') || '';
    sessionStorage.setItem('edgeseg-token', token);
    params.delete('token');
    const rest = params.toString();
    history.replaceState(null, '', location.pathname + (rest ? '?' + rest : ''));
  }
  const url = (path, query) => {
    const q = new URLSearchParams(query || {});
    if (token) q.set('token', token);
    const s = q.toString();
    return path + (s ? '?' + s : '');
  };

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const fmt = (v, digits) => (v === null || v === undefined || Number.isNaN(v)) ? '–' : Number(v).toFixed(digits);
  const int = (v) => (v === null || v === undefined) ? '–' : Number(v).toLocaleString('en-US');
  const duration = (s) => {
    if (s === null || s === undefined) return '–';
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    return `${m}m ${s % 60}s`;
  };

  // -- stream ---------------------------------------------------------------------------------
  let img = $('stream');
  let view = 'result';
  let camera = '';  // the camera watched; '' = the server's default camera
  let retry = null;
  const cameraQuery = () => camera ? { camera: camera } : {};
  const onStreamError = () => {
    $('stream-wait').classList.remove('hidden');
    $('stream-wait').textContent = 'stream unavailable, retrying…';
    retry = setTimeout(connectStream, 2000);
  };
  const watch = (image) => {
    image.addEventListener('load', () => $('stream-wait').classList.add('hidden'));
    image.addEventListener('error', onStreamError);
  };
  const connectStream = (fresh) => {
    clearTimeout(retry);
    if (fresh) {
      // Another stream in a new element: Chrome keeps showing an element's old stream until the
      // new one's first frame is followed by a second, which a quiet camera may not send for
      // seconds; a new element shows the first frame at once. The old one's request ends with it.
      const next = img.cloneNode(false);
      next.removeAttribute('src');
      watch(next);
      img.removeAttribute('src');
      img.replaceWith(next);
      img = next;
    }
    img.src = url('stream.mjpg', { view: view, ...cameraQuery() });
  };
  watch(img);
  for (const name of ['result', 'input']) {
    $('view-' + name).addEventListener('click', () => {
      if (view === name) return;
      view = name;
      $('view-result').classList.toggle('on', name === 'result');
      $('view-input').classList.toggle('on', name === 'input');
      connectStream(true);
    });
  }
  connectStream();

  // -- latency chart, drawn by hand -----------------------------------------------------------
  const HISTORY = 300;
  const e2e = [];
  const inf = [];
  const canvas = $('latency-chart');
  const niceMax = (v) => {
    if (!(v > 0)) return 10;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  };
  const drawChart = () => {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight || 160;
    if (canvas.width !== Math.round(w * dpr)) canvas.width = Math.round(w * dpr);
    if (canvas.height !== Math.round(h * dpr)) canvas.height = Math.round(h * dpr);
    const g = canvas.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const left = 40, right = 8, top = 8, bottom = 18;
    const pw = w - left - right, ph = h - top - bottom;
    const sorted = e2e.slice().sort((a, b) => a - b);
    const p98 = sorted.length ? sorted[Math.floor(0.98 * (sorted.length - 1))] : 0;
    const ymax = niceMax(Math.max(p98, ...inf, 1) * 1.1);
    g.font = '11px system-ui, sans-serif';
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    for (let i = 0; i <= 4; i++) {
      const y = top + ph - (ph * i) / 4;
      g.strokeStyle = i ? '#232a33' : '#39414d';
      g.lineWidth = 1;
      g.beginPath(); g.moveTo(left, Math.round(y) + 0.5); g.lineTo(left + pw, Math.round(y) + 0.5); g.stroke();
      g.fillStyle = '#8a94a3';
      g.fillText(String(Math.round((ymax * i) / 4 * 10) / 10), left - 6, y);
    }
    g.textAlign = 'left';
    g.textBaseline = 'alphabetic';
    g.fillText(`last ${e2e.length} frames`, left, h - 3);
    const series = (data, color) => {
      if (data.length < 2) return;
      g.strokeStyle = color;
      g.lineWidth = 1.5;
      g.beginPath();
      data.forEach((v, i) => {
        const x = left + (pw * i) / (HISTORY - 1) + pw * (HISTORY - data.length) / (HISTORY - 1);
        const y = top + ph - Math.min(v / ymax, 1) * ph;
        if (i) g.lineTo(x, y); else g.moveTo(x, y);
      });
      g.stroke();
    };
    series(e2e, '#4cc2ff');
    series(inf, '#ffb633');
  };
  window.addEventListener('resize', drawChart);

  // -- statistics -----------------------------------------------------------------------------
  let prev = null;  // {time, frames} of the previous event, for the current frame rate
  const setText = (id, text) => { const e = $(id); if (e.textContent !== text) e.textContent = text; };

  const renderStats = (s, t) => {
    if (!s) return;
    setText('fig-fps', fmt(s.fps, 1));
    setText('fig-frames', int(s.frames));
    setText('fig-instances', int(s.instances));
    setText('fig-dropped', int(s.dropped));
    setText('fig-skipped', int(s.skipped));
    setText('fig-errors', int(s.sink_errors));
    setText('fig-uptime', duration(s.uptime_s));
    setText('meta-model', s.model || '–');
    const engine = s.engine ? ` · ${s.engine.precision}` : '';
    setText('meta-backend', (s.backend || '–') + engine);
    if (prev && t > prev.time && s.frames >= prev.frames) {
      setText('live-fps', fmt((s.frames - prev.frames) / (t - prev.time), 1));
    }
    prev = { time: t, frames: s.frames };
    const stages = $('stages');
    stages.replaceChildren();
    const medians = s.stage_median_ms || {};
    for (const [name, ms] of Object.entries(medians)) {
      const span = el('span', null, name + ' ');
      span.appendChild(el('b', null, fmt(ms, 1)));
      span.appendChild(document.createTextNode(' ms'));
      stages.appendChild(span);
    }
    if (Object.keys(medians).length) stages.insertBefore(el('span', null, 'stage medians:'), stages.firstChild);
  };

  const renderFrame = (f) => {
    if (!f) return;
    setText('cap-camera', String(f.camera ?? ''));
    setText('cap-frame', String(f.frame_id));
    setText('cap-res', f.resolution ? `${f.resolution[1]}×${f.resolution[0]}` : '–');
    setText('cap-size', f.image_size ? `${f.image_size[1]}×${f.image_size[0]}` : '–');
    setText('cap-instances', String(f.instances));
    setText('cap-name', f.name || '');
  };

  const renderLatency = (samples) => {
    for (const [, total, infer] of samples || []) {
      e2e.push(total);
      inf.push(infer);
    }
    if (e2e.length > HISTORY) { e2e.splice(0, e2e.length - HISTORY); inf.splice(0, inf.length - HISTORY); }
    if (e2e.length) {
      const sorted = e2e.slice().sort((a, b) => a - b);
      setText('fig-latency', fmt(sorted[Math.floor(sorted.length / 2)], 1) + ' ms');
    }
    drawChart();
  };

  const meter = (label, value, percent, hot) => {
    const box = el('div');
    const head = el('div', 'meter-label');
    head.appendChild(el('span', null, label));
    head.appendChild(el('b', null, value));
    box.appendChild(head);
    if (percent !== null && percent !== undefined) {
      const track = el('div', 'track');
      const fill = el('div', 'fill');
      const p = Math.max(0, Math.min(100, percent));
      fill.style.width = p + '%';
      if (hot && p >= hot[1]) fill.classList.add('hot');
      else if (hot && p >= hot[0]) fill.classList.add('warm');
      track.appendChild(fill);
      box.appendChild(track);
    }
    return box;
  };

  const renderSystem = (m) => {
    const box = $('system');
    box.replaceChildren();
    if (!m) return;
    if (m.error) { box.appendChild(el('div', 'muted', m.error)); return; }
    const has = (v) => v !== undefined && v !== null;
    if (has(m.cpu_percent)) {
      const cores = m.cpu_count ? ` (${m.cpu_count} cores)` : '';
      box.appendChild(meter('CPU' + cores, fmt(m.cpu_percent, 0) + ' %', m.cpu_percent, [70, 90]));
    }
    if (has(m.gpu_percent)) box.appendChild(meter('GPU', fmt(m.gpu_percent, 0) + ' %', m.gpu_percent, [80, 95]));
    if (has(m.gpu_memory_used_mb)) {
      box.appendChild(meter('GPU memory', `${int(m.gpu_memory_used_mb)} / ${int(m.gpu_memory_total_mb)} MB`,
        100 * m.gpu_memory_used_mb / m.gpu_memory_total_mb, [75, 90]));
    }
    if (has(m.memory_percent)) {
      const text = has(m.memory_used_mb) ? `${int(m.memory_used_mb)} / ${int(m.memory_total_mb)} MB`
        : fmt(m.memory_percent, 0) + ' %';
      box.appendChild(meter('Memory', text, m.memory_percent, [75, 90]));
    }
    if (has(m.process_cpu_percent) || has(m.process_rss_mb)) {
      const parts = [];
      if (has(m.process_cpu_percent)) parts.push(fmt(m.process_cpu_percent, 0) + ' % CPU');
      if (has(m.process_rss_mb)) parts.push(fmt(m.process_rss_mb, 0) + ' MB');
      const share = has(m.process_cpu_percent) ? m.process_cpu_percent / (m.cpu_count || 1) : null;
      box.appendChild(meter('edgeseg process', parts.join(' · '), share, null));
    }
    if (has(m.power_watts)) box.appendChild(meter('Power', fmt(m.power_watts, 1) + ' W', null, null));
    for (const [name, c] of Object.entries(m.temperatures_c || {})) {
      box.appendChild(meter(name + ' temperature', fmt(c, 1) + ' °C', c, [70, 85]));
    }
    setText('sys-load', m.load_avg ? 'load ' + m.load_avg.map((v) => fmt(v, 2)).join(' ') : '');
  };

  const renderCounts = (counts) => {
    const body = $('counts');
    body.replaceChildren();
    const classes = (counts && counts.classes) || [];
    $('counts-empty').classList.toggle('hidden', classes.length > 0);
    const top = Math.max(1, ...classes.map((c) => c.total));
    for (const c of classes) {
      const tr = el('tr');
      const name = el('td');
      const dot = el('span', 'dot');
      dot.style.background = c.color;
      name.appendChild(dot);
      name.appendChild(document.createTextNode(c.name));
      tr.appendChild(name);
      const bar = el('td', 'bar');
      const track = el('div', 'track');
      const fill = el('div', 'fill');
      fill.style.width = (100 * c.total / top) + '%';
      fill.style.background = c.color;
      track.appendChild(fill);
      bar.appendChild(track);
      tr.appendChild(bar);
      tr.appendChild(el('td', 'num', String(c.frame)));
      tr.appendChild(el('td', 'num', int(c.total)));
      body.appendChild(tr);
    }
  };

  // A rung is a size, or {size, effort, effort_name} from the adaptive picker.
  const rung = (r) => {
    if (r === null || r === undefined) return '?';
    if (typeof r !== 'object') return String(r);
    const effort = r.effort_name && r.effort_name !== 'full' ? ' ' + r.effort_name : '';
    return String(r.size ?? '?') + effort;
  };
  const renderSwitches = (switches) => {
    const list = $('switches');
    list.replaceChildren();
    $('switches-empty').classList.toggle('hidden', (switches || []).length > 0);
    for (const s of (switches || []).slice(-50).reverse()) {
      const li = el('li');
      const when = s.time ? new Date(s.time * 1000).toLocaleTimeString() + ' ' : '';
      li.appendChild(document.createTextNode(when));
      li.appendChild(el('b', null, `${rung(s.from)} → ${rung(s.to)}`));
      const why = [s.measured, s.reason].filter(Boolean).join(': ');
      if (why) li.appendChild(document.createTextNode(' ' + why));
      li.title = s.reason || '';
      list.appendChild(li);
    }
  };

  // -- cameras: the selector, the grid and the table (shown with two cameras or more) -----------
  // Camera names are the user's: they go into the page as text only, like zone names.
  const GRID_PERIOD_MS = 500;
  const tiles = new Map();  // camera name -> {box, img, state, url}
  let cameraNames = [];
  let shownCamera = '';  // the camera the main view shows now (the default one while camera is '')
  let selectCamera = () => {};  // set once the event stream below exists

  const markSelected = () => {
    for (const [name, tile] of tiles) tile.box.classList.toggle('on', name === shownCamera);
    const select = $('camera');
    if (select.value !== shownCamera && cameraNames.includes(shownCamera)) select.value = shownCamera;
    setText('chart-camera', cameraNames.length > 1 && shownCamera ? '· ' + shownCamera : '');
  };

  const makeTile = (name) => {
    const box = el('button', 'tile');
    box.type = 'button';
    box.title = name;
    box.dataset.camera = name;
    const image = el('img');
    image.alt = name;
    const label = el('span', 'tile-label');
    label.appendChild(el('b', null, name));
    const state = el('span', 'tile-state', '–');
    label.appendChild(state);
    box.appendChild(image);
    box.appendChild(label);
    box.addEventListener('click', () => selectCamera(name));
    return { box: box, img: image, state: state, url: null };
  };

  // One frame per tile per GRID_PERIOD_MS, fetched (the token in a header, no cache) and shown
  // from a blob: every request is short, so many cameras never hold many connections.
  const refreshTile = async (name, tile) => {
    try {
      const headers = token ? { Authorization: 'Bearer ' + token } : {};
      const r = await fetch('frame.jpg?' + new URLSearchParams({ camera: name }),
        { headers: headers, cache: 'no-store' });
      if (!r.ok) return;
      const blob = await r.blob();
      const previous = tile.url;
      tile.url = URL.createObjectURL(blob);
      tile.img.src = tile.url;
      if (previous) URL.revokeObjectURL(previous);
    } catch (e) { /* the next round tries again */ }
  };
  const refreshGrid = async () => {
    if (tiles.size && !document.hidden) await Promise.all(Array.from(tiles, ([n, t]) => refreshTile(n, t)));
    setTimeout(refreshGrid, GRID_PERIOD_MS);
  };

  const cameraRow = (c) => {
    const tr = el('tr');
    const name = el('td');
    const dot = el('span', 'dot ' + (c.online === false ? 'off' : c.online ? 'up' : 'unknown'));
    name.appendChild(dot);
    name.appendChild(document.createTextNode(String(c.name)));
    name.title = [c.name, c.uri].filter(Boolean).join(' · ');
    tr.appendChild(name);
    tr.appendChild(el('td', 'num', fmt(c.fps, 1)));
    for (const k of ['captured', 'processed', 'dropped', 'restarts']) tr.appendChild(el('td', 'num', int(c[k])));
    tr.classList.toggle('on', c.name === shownCamera);
    tr.addEventListener('click', () => selectCamera(c.name));
    return tr;
  };

  const dropTile = (name) => {
    const tile = tiles.get(name);
    tile.box.remove();
    if (tile.url) URL.revokeObjectURL(tile.url);
    tiles.delete(name);
  };

  const renderCameras = (list, current) => {
    const cams = (Array.isArray(list) ? list : []).filter((c) => c && typeof c.name === 'string');
    const names = cams.map((c) => c.name);
    if (typeof current === 'string') shownCamera = current;
    if (camera && names.length && !names.includes(camera)) {  // the camera watched was removed
      selectCamera('');
      return;
    }
    const many = names.length > 1;
    for (const id of ['camera', 'cameras-panel', 'camera-stats', 'cap-camera-box']) {
      $(id).classList.toggle('hidden', !many);
    }
    if (names.join('\n') !== cameraNames.join('\n')) {
      cameraNames = names;
      $('camera').replaceChildren(...names.map((n) => { const o = el('option', null, n); o.value = n; return o; }));
      const wanted = many ? names : [];  // one camera: the page as it always was, no tile fetched
      for (const name of Array.from(tiles.keys())) if (!wanted.includes(name)) dropTile(name);
      const grid = $('camera-grid');
      for (const name of wanted) {
        if (!tiles.has(name)) tiles.set(name, makeTile(name));
        grid.appendChild(tiles.get(name).box);  // in the cameras' order
      }
    }
    for (const c of cams) {
      const tile = tiles.get(c.name);
      if (!tile) continue;
      const text = c.online === false ? 'offline' : (num(c.fps) ? fmt(c.fps, 1) + ' FPS' : '–');
      if (tile.state.textContent !== text) tile.state.textContent = text;
      tile.box.classList.toggle('offline', c.online === false);
    }
    $('camera-rows').replaceChildren(...(many ? cams.map(cameraRow) : []));
    markSelected();
  };
  $('camera').addEventListener('change', () => selectCamera($('camera').value));
  refreshGrid();

  // -- tracking: zones, lines and the events list ----------------------------------------------
  // Zone and line names are the user's, and event documents carry them: every value goes into
  // the page as text (textContent, createTextNode), never as markup.
  const EVENTS_SHOWN = 100;
  const COLOR = /^#[0-9a-fA-F]{6}$/;
  const num = (v) => typeof v === 'number' && Number.isFinite(v);
  const clock = (t) => num(t) ? new Date(t * 1000).toLocaleTimeString() : '–';
  const showTracking = () => {
    $('zones-panel').classList.remove('hidden');
    $('events-panel').classList.remove('hidden');
  };
  const swatch = (color) => {
    const dot = el('span', 'dot');
    if (typeof color === 'string' && COLOR.test(color)) dot.style.background = color;
    return dot;
  };
  const nameCell = (name, color) => {
    const td = el('td');
    td.appendChild(swatch(color));
    td.appendChild(document.createTextNode(String(name)));
    td.title = String(name);
    return td;
  };

  const renderZones = (z) => {
    if (!z) {  // the newest frame has no analytics: tracking is off (the events list stays)
      $('zones-panel').classList.add('hidden');
      return;
    }
    showTracking();
    const zones = Array.isArray(z.zones) ? z.zones : [];
    const lines = Array.isArray(z.lines) ? z.lines : [];
    const body = $('zones');
    body.replaceChildren();
    $('zones-empty').classList.toggle('hidden', zones.length > 0);
    for (const zone of zones) {
      const tr = el('tr');
      tr.appendChild(nameCell(zone.name, zone.color));
      const inside = Object.entries(zone.counts || {}).filter(([, n]) => n > 0)
        .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
      tr.appendChild(el('td', 'classes', inside.length ? inside.map(([c, n]) => `${c} ${n}`).join(' · ') : '–'));
      tr.appendChild(el('td', 'num', int(zone.total)));
      body.appendChild(tr);
    }
    const lineBody = $('lines');
    lineBody.replaceChildren();
    $('lines-empty').classList.toggle('hidden', lines.length > 0);
    for (const line of lines) {
      const tr = el('tr');
      tr.appendChild(nameCell(line.name, line.color));
      tr.appendChild(el('td', 'num', int(line.in)));
      tr.appendChild(el('td', 'num', int(line.out)));
      lineBody.appendChild(tr);
    }
  };

  // An event document's zones (edgeseg/schemas/event.v1.json): a mapping zone -> {entered_at,
  // left_at, dwell_s, loitering} (a list of {zone, ...} is read too); its crossings: a list of
  // {line, direction, time}.
  const zoneVisits = (zones) => {
    if (Array.isArray(zones)) return zones.filter((v) => v && typeof v === 'object').map((v) => [v.zone ?? v.name, v]);
    if (zones && typeof zones === 'object') return Object.entries(zones).map(([k, v]) => [k, v || {}]);
    return [];
  };
  const scoreText = (s) => {
    if (num(s)) return fmt(s, 2);
    if (s && typeof s === 'object') {
      const parts = [];
      if (num(s.best)) parts.push('best ' + fmt(s.best, 2));
      if (num(s.current)) parts.push('now ' + fmt(s.current, 2));
      return parts.join(' ');
    }
    return '';
  };
  const detail = (label, parts) => {
    const div = el('div', 'ev-detail', label + ' ');
    parts.forEach((text, i) => {
      if (i) div.appendChild(document.createTextNode(' · '));
      div.appendChild(el('b', null, text));
    });
    return div;
  };
  const eventNode = (e) => {
    const d = (e.document && typeof e.document === 'object') ? e.document : {};
    const type = ['new', 'update', 'end'].includes(e.type) ? e.type : 'other';
    const li = el('li', 'ev-' + type);
    const head = el('div', 'ev-head');
    head.appendChild(el('span', 'ev-time', clock(e.time)));
    if (cameraNames.length > 1 && e.camera) head.appendChild(el('span', 'ev-camera', String(e.camera)));
    head.appendChild(el('span', 'ev-type', String(e.type)));
    head.appendChild(el('b', null, String(d.class ?? d.class_name ?? d.label ?? '?')));
    head.appendChild(el('span', 'ev-track', '#' + String(e.track_id)));
    const score = scoreText(d.score);
    if (score) head.appendChild(el('span', 'muted', score));
    li.appendChild(head);
    const reasons = (Array.isArray(e.reasons) ? e.reasons : []).filter((r) => r !== e.type).map(String);
    if (reasons.length) li.appendChild(detail('why', reasons));
    const visits = zoneVisits(d.zones).map(([name, v]) => {
      let text = `${name} entered ${clock(v.entered_at)}`;
      if (num(v.left_at)) text += `, left ${clock(v.left_at)}`;
      const dwell = v.dwell_s ?? v.dwell_seconds ?? v.dwell;
      if (num(dwell)) text += ` (${fmt(dwell, 1)} s)`;
      if (v.loitering === true) text += ' loitering';
      return text;
    });
    if (visits.length) li.appendChild(detail('zones', visits));
    const crossings = (Array.isArray(d.crossings) ? d.crossings : []).filter((c) => c && typeof c === 'object')
      .map((c) => `${c.line ?? c.name} ${c.direction ?? ''} ${clock(c.time ?? c.timestamp)}`);
    if (crossings.length) li.appendChild(detail('lines', crossings));
    return li;
  };

  let lastEvent = 0;  // the newest event message shown (numbered by the server from 1)
  let resync = true;  // the next events message after (re)connecting may restart the numbering
  const addEvents = (entries) => {
    const fresh = (Array.isArray(entries) ? entries : []).filter((e) => e && num(e.seq));
    if (!fresh.length) return;
    const list = $('events-list');
    if (resync && Math.max(...fresh.map((e) => e.seq)) < lastEvent) {  // a restarted server
      list.replaceChildren();
      lastEvent = 0;
    }
    resync = false;
    showTracking();
    const unseen = fresh.filter((e) => e.seq > lastEvent).sort((a, b) => a.seq - b.seq);
    for (const e of unseen) list.insertBefore(eventNode(e), list.firstChild);
    if (unseen.length) lastEvent = unseen[unseen.length - 1].seq;
    while (list.children.length > EVENTS_SHOWN) list.removeChild(list.lastChild);
    $('events-empty').classList.toggle('hidden', list.children.length > 0);
  };

  // -- controls -------------------------------------------------------------------------------
  const conf = $('conf'), nms = $('nms'), resolution = $('resolution'), source = $('source'), pause = $('pause');
  let editing = 0;  // until a change is answered, incoming state does not overwrite the widgets
  let paused = false;
  let sourceDirty = false;

  const message = (text, kind) => {
    const m = $('control-msg');
    m.textContent = text;
    m.className = 'msg' + (kind ? ' ' + kind : '');
  };

  const send = async (change) => {
    editing++;
    try {
      const headers = { 'Content-Type': 'application/json' };
      if (token) headers.Authorization = 'Bearer ' + token;
      const r = await fetch('api/control', { method: 'POST', headers, body: JSON.stringify(change) });
      const answer = await r.json().catch(() => ({}));
      if (!r.ok) {
        message(answer.error || `refused (${r.status})`, 'bad');
        return false;
      }
      message('applied: ' + Object.entries(change).map(([k, v]) => `${k} = ${v}`).join(', '), 'ok');
      if (answer.controls) renderControls(answer.controls, true);
      return true;
    } catch (e) {
      message('no answer from the device: ' + e, 'bad');
      return false;
    } finally {
      editing--;
    }
  };

  // The slider sends its value 150 ms after it stops moving, or at once when released.
  let confTimer = null;
  let confPending = null;
  const sendConf = () => {
    clearTimeout(confTimer);
    confTimer = null;
    if (confPending === null) return;
    const value = confPending;
    confPending = null;
    send({ conf_threshold: value });
  };
  conf.addEventListener('input', () => {
    confPending = Number(conf.value);
    setText('conf-value', confPending.toFixed(2));
    clearTimeout(confTimer);
    confTimer = setTimeout(sendConf, 150);
  });
  conf.addEventListener('change', () => {
    confPending = Number(conf.value);
    sendConf();
  });
  nms.addEventListener('change', () => send({ nms: nms.value }));
  resolution.addEventListener('change', () => {
    const v = resolution.value;
    send({ resolution: v === 'auto' ? 'auto' : Number(v) });
  });
  source.addEventListener('input', () => { sourceDirty = true; });
  const switchSource = async () => {
    const uri = source.value.trim();
    if (!uri) { message('enter a source URI', 'bad'); return; }
    if (await send({ source: uri })) sourceDirty = false;
  };
  $('source-apply').addEventListener('click', switchSource);
  source.addEventListener('keydown', (e) => { if (e.key === 'Enter') switchSource(); });
  pause.addEventListener('click', () => send({ paused: !paused }));

  const renderControls = (c, force) => {
    if (!c) return;
    paused = !!c.paused;
    pause.textContent = paused ? 'Resume' : 'Pause';
    pause.classList.toggle('paused', paused);
    if (editing && !force) return;
    if (typeof c.conf_threshold === 'number' && confPending === null && document.activeElement !== conf) {
      conf.value = String(c.conf_threshold);
      setText('conf-value', c.conf_threshold.toFixed(2));
    }
    if (c.nms && document.activeElement !== nms) nms.value = c.nms;
    const choices = ['auto', ...(c.resolutions || [])].map(String);
    const have = Array.from(resolution.options).map((o) => o.value);
    if (choices.join() !== have.join() && document.activeElement !== resolution) {
      resolution.replaceChildren(...choices.map((v) => { const o = el('option', null, v); o.value = v; return o; }));
    }
    if (c.resolution !== undefined && document.activeElement !== resolution) {
      const v = String(c.resolution);
      if (!Array.from(resolution.options).some((o) => o.value === v)) {
        const o = el('option', null, v); o.value = v; resolution.appendChild(o);
      }
      resolution.value = v;
    }
    if (typeof c.source === 'string') {
      setText('meta-source', c.source);
      if (!sourceDirty && document.activeElement !== source) source.value = c.source;
    }
  };

  // -- the event stream -----------------------------------------------------------------------
  const status = (text, kind) => {
    const s = $('status');
    s.textContent = text;
    s.className = 'pill pill-' + kind;
  };
  const onStats = (e) => {
    let p;
    try { p = JSON.parse(e.data); } catch (err) { return; }
    renderCameras(p.cameras, p.camera);
    renderStats(p.stats, p.time);
    setText('stats-note', p.stats_error ? 'pipeline restarting…' : '');
    renderFrame(p.frame);
    renderLatency(p.latency);
    renderSystem(p.system);
    renderCounts(p.counts);
    renderZones(p.zones);
    renderSwitches(p.switches);
    renderControls(p.controls, false);
    if (p.controls && p.controls.paused) status('paused', 'wait');
    else if (p.stats_error) status('restarting', 'wait');
    else status('live', 'live');
    if (img.naturalWidth > 0) $('stream-wait').classList.add('hidden');
  };
  const onEvents = (e) => {
    let p;
    try { p = JSON.parse(e.data); } catch (err) { return; }
    addEvents(p.events);
  };
  let events = null;
  const connectEvents = () => {
    if (events) events.close();
    events = new EventSource(url('events', cameraQuery()));
    events.addEventListener('stats', onStats);
    events.addEventListener('events', onEvents);
    events.addEventListener('open', () => { resync = true; });
    events.addEventListener('error', () => status('disconnected', 'bad'));
  };
  // Another camera in the main view: its stream, and its figures from an event stream of its own.
  selectCamera = (name) => {
    if (name === camera) return;
    camera = name;
    shownCamera = name || shownCamera;
    e2e.length = 0;
    inf.length = 0;
    setText('fig-latency', '–');
    $('stream-wait').textContent = 'waiting for frames…';
    $('stream-wait').classList.remove('hidden');
    markSelected();
    connectStream(true);
    connectEvents();
  };
  connectEvents();
  drawChart();
})();
