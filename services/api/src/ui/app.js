// The exo live run view. Plain JavaScript, no dependencies, served by the api.
// Routes: #/ (namespaces), #/ns/<ns> (recent runs), #/ns/<ns>/run/<id> (one run, live).
'use strict';

// The buckets a run's per-node counts use (CREATED, QUEUED, EXECUTED: PENDING).
const STATUSES = ['PENDING', 'SUCCESS', 'PRUNED', 'ERRORED', 'NEXT_CREATED_ERROR',
  'RETRY_CREATED', 'CANCELLED'];
const PAGE = 100;
const LOG_KEPT = 30;
const BOX_W = 230, BOX_H = 96, GAP_X = 70, GAP_Y = 28;

let key = localStorage.getItem('exo.key') || '';
let stopCurrent = () => {};

const $ = (sel) => document.querySelector(sel);
const enc = encodeURIComponent;

function h(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const kid of kids.flat()) {
    if (kid != null) e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return e;
}

function s(tag, attrs = {}, text) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text != null) e.textContent = text;
  return e;
}

class Refused extends Error {}

async function api(path) {
  const r = await fetch(path, { headers: { 'x-api-key': key } });
  if (r.status === 401 || r.status === 403) throw new Refused(`${r.status}: the API key was refused`);
  if (!r.ok) throw new Error(`${r.status} from ${path}`);
  return r.json();
}

function show(...nodes) {
  const main = $('#main');
  main.replaceChildren(...nodes);
}

function crumbs(ns, run) {
  const parts = [h('a', { href: '#/' }, 'namespaces')];
  if (ns) parts.push(h('span', { text: '/' }), h('a', { href: `#/ns/${enc(ns)}` }, ns));
  if (run) parts.push(h('span', { text: '/' }), h('span', { text: run }));
  $('#crumbs').replaceChildren(...parts);
}

function failed(e) {
  if (e instanceof Refused) {
    show(h('p', { class: 'error', 'data-testid': 'refused' }, e.message, ': enter a key above.'));
  } else {
    show(h('p', { class: 'error' }, String(e.message || e)));
  }
}

// Runs `load` now and every `ms` until the page changes.
function every(ms, load) {
  let alive = true;
  let timer = null;
  const tick = async () => {
    if (!alive) return;
    try { await load(); } catch (e) { failed(e); alive = false; return; }
    if (alive) timer = setTimeout(tick, ms);
  };
  tick();
  return () => { alive = false; clearTimeout(timer); };
}

async function namespacesPage() {
  crumbs();
  const v = await api('/v0/namespaces');
  const go = h('form', { onsubmit: (e) => { e.preventDefault(); location.hash = `#/ns/${enc(e.target.ns.value)}`; } },
    h('input', { name: 'ns', placeholder: 'namespace' }), ' ', h('button', { type: 'submit' }, 'Open'));
  const list = v.namespaces.map((ns) => h('li', {}, h('a', { href: `#/ns/${enc(ns)}` }, ns)));
  show(h('h2', { text: 'Namespaces' }), h('ul', {}, list), go);
}

function runsPage(ns) {
  crumbs(ns);
  return every(2000, async () => {
    const v = await api(`/v0/namespace/${enc(ns)}/runs/1/50`);
    const rows = v.runs.map((r) => h('tr', { 'data-run': r.run_id },
      h('td', {}, h('a', { href: `#/ns/${enc(ns)}/run/${enc(r.run_id)}` }, r.run_id)),
      h('td', { text: r.graph_name }),
      h('td', {}, h('span', { class: `badge ${r.status}` }, r.status)),
      h('td', { text: `${r.success_count}/${r.total_count}` }),
      h('td', { text: r.pending_count }),
      h('td', { text: r.errored_count }),
      h('td', { text: r.created_at })));
    show(h('h2', {}, `Runs in ${ns}`, h('span', { class: 'muted' }, ` (${v.total})`)),
      h('table', { 'data-testid': 'runs' },
        h('thead', {}, h('tr', {}, ['run', 'graph', 'status', 'done', 'pending', 'errored', 'created']
          .map((t) => h('th', { text: t })))),
        h('tbody', {}, rows)));
  });
}

// One box per graph node (the run's per-node counts), laid out in layers
// along the template's edges (next_nodes solid, unites dashed); without the
// template, along the nodes' parents.
function layout(summary, template) {
  const groups = new Map();
  const group = (ident, node) => {
    if (!groups.has(ident)) groups.set(ident, { ident, node, counts: {}, total: 0 });
    return groups.get(ident);
  };
  for (const t of template.nodes || []) group(t.identifier, t.node_name);
  for (const n of summary.nodes) Object.assign(group(n.identifier, n.node_name), { counts: n.counts, total: n.total, info: n });
  const edges = [];
  for (const t of template.nodes || []) {
    for (const next of t.next_nodes || []) edges.push({ from: t.identifier, to: next, unites: false });
    if (t.unites) edges.push({ from: t.unites.identifier, to: t.identifier, unites: true });
  }
  if (!(template.nodes || []).length) {
    for (const n of summary.nodes) if (n.parent) edges.push({ from: n.parent, to: n.identifier, unites: false });
  }
  const depth = new Map([...groups.keys()].map((k) => [k, 0]));
  for (let i = 0; i < groups.size; i += 1) {
    for (const e of edges) {
      if (!e.unites && groups.has(e.from) && groups.has(e.to)) {
        depth.set(e.to, Math.max(depth.get(e.to), depth.get(e.from) + 1));
      }
    }
  }
  const rows = new Map();
  for (const g of groups.values()) {
    const d = depth.get(g.ident);
    const row = rows.get(d) || 0;
    rows.set(d, row + 1);
    g.x = 20 + d * (BOX_W + GAP_X);
    g.y = 50 + row * (BOX_H + GAP_Y);
  }
  return { groups, edges };
}

function drawBox(g, onPick) {
  const box = s('g', { class: 'box', transform: `translate(${g.x},${g.y})`, 'data-testid': `box-${g.ident}`,
    'data-total': g.total, 'data-success': g.counts.SUCCESS || 0, 'data-errored': g.counts.ERRORED || 0 });
  box.append(s('rect', { class: 'frame', width: BOX_W, height: BOX_H }));
  box.append(s('text', { x: 10, y: 18, class: 'title' }, g.ident));
  box.append(s('text', { x: 10, y: 34, class: 'sub' }, `${g.node} · ${g.total} state${g.total === 1 ? '' : 's'}`));
  let x = 10;
  for (const st of STATUSES) {
    const n = g.counts[st] || 0;
    if (!n) continue;
    const w = Math.max(2, ((BOX_W - 20) * n) / Math.max(1, g.total));
    box.append(s('rect', { x, y: 44, width: w, height: 10, class: `st-${st}` }));
    x += w;
  }
  // Counts per status, three to a line.
  const parts = STATUSES.filter((st) => g.counts[st]).map((st) => `${st} ${g.counts[st]}`);
  const counts = s('text', { x: 10, y: 72, class: 'sub', 'data-testid': `counts-${g.ident}` });
  const lines = parts.length ? [parts.slice(0, 3), parts.slice(3)].filter((l) => l.length) : [['not started']];
  lines.forEach((l, i) => counts.append(s('tspan', { x: 10, dy: i ? 14 : 0 }, l.join(' · '))));
  box.append(counts);
  box.addEventListener('click', () => onPick(g, box));
  return box;
}

function drawGraph({ groups, edges }, onPick) {
  const width = Math.max(...[...groups.values()].map((g) => g.x + BOX_W), 300) + 20;
  const height = Math.max(...[...groups.values()].map((g) => g.y + BOX_H), 120) + 20;
  const svg = s('svg', { width, height, 'data-testid': 'graph' });
  const defs = s('defs');
  const marker = s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto' });
  marker.append(s('path', { d: 'M0,0 L10,5 L0,10 z', fill: '#9a9aa0' }));
  defs.append(marker);
  svg.append(defs);
  for (const e of edges) {
    const a = groups.get(e.from);
    const b = groups.get(e.to);
    if (!a || !b) continue;
    if (e.unites) {
      // An arc over the boxes, top to top: the unite waits for everything below its target.
      const [x1, x2, y] = [a.x + BOX_W / 2, b.x + BOX_W / 2, Math.min(a.y, b.y)];
      svg.append(s('path', { class: 'edge unites', d: `M${x1},${a.y} C${x1},${y - 40} ${x2},${y - 40} ${x2},${b.y}` }));
      svg.append(s('text', { x: (x1 + x2) / 2 - 18, y: y - 14, class: 'sub' }, 'unites'));
      continue;
    }
    const [x1, y1] = [a.x + BOX_W, a.y + BOX_H / 2];
    const [x2, y2] = [b.x, b.y + BOX_H / 2];
    const mid = (x1 + x2) / 2;
    svg.append(s('path', { class: 'edge', d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}` }));
  }
  for (const g of groups.values()) svg.append(drawBox(g, onPick));
  return svg;
}

function legend() {
  return h('div', { class: 'legend' }, STATUSES.map((st) => h('span', {}, h('i', { class: `st-${st}` }), st)));
}

async function stateDetails(ns, run, state) {
  const pane = $('#state-detail');
  pane.replaceChildren(h('p', { class: 'muted', text: 'Loading…' }));
  const d = await api(`/v0/namespace/${enc(ns)}/graph/${enc(run.graph_name)}/run/${enc(run.run_id)}/node/${enc(state.id)}`);
  const json = (v) => h('pre', { text: JSON.stringify(v, null, 2) });
  pane.replaceChildren(
    h('h4', {}, `${d.identifier} · `, h('span', { class: `badge ${d.status}` }, d.status)),
    h('p', { class: 'muted', 'data-testid': 'state-meta' },
      `state ${d.id} · attempt ${(state.retry_count || 0) + 1} · created ${d.created_at} · updated ${d.updated_at}`),
    d.error ? h('p', { class: 'error', 'data-testid': 'state-error', text: d.error }) : null,
    h('b', { text: 'inputs' }), json(d.inputs), h('b', { text: 'outputs' }), json(d.outputs),
    h('details', {}, h('summary', { text: 'everything' }), json(d)));
}

// The node's states a page at a time (optionally of one status), in the side pane.
function pickGroup(ns, run, g) {
  const aside = $('#details');
  aside.hidden = false;
  const list = h('div', { class: 'states', 'data-testid': 'state-list' });
  const more = h('button', { hidden: true }, 'more');
  const filter = h('select', { 'data-testid': 'status-filter' }, h('option', { value: '' }, 'every status'),
    ['CREATED', 'QUEUED', 'EXECUTED', ...STATUSES.slice(1)].map((st) => h('option', { value: st }, st)));
  let after = null;
  const load = async () => {
    const q = new URLSearchParams({ limit: PAGE });
    if (filter.value) q.set('status', filter.value);
    if (after) q.set('after', after);
    const page = await api(`/v0/namespace/${enc(ns)}/run/${enc(run.run_id)}/nodes/${enc(g.ident)}/states?${q}`);
    list.append(...page.states.map((st) => h('div', { onclick: () => stateDetails(ns, run, st).catch(failed) },
      `${st.status.padEnd(12)} ${st.id}${st.retry_count ? ` · attempt ${st.retry_count + 1}` : ''}${st.error ? ' · ' + st.error : ''}`)));
    after = page.next_after;
    more.hidden = !after;
  };
  const reload = () => { list.replaceChildren(); after = null; load().catch(failed); };
  more.addEventListener('click', () => load().catch(failed));
  filter.addEventListener('change', reload);
  const i = g.info || {};
  aside.replaceChildren(
    h('button', { class: 'close', onclick: () => { aside.hidden = true; } }, 'close'),
    h('h3', {}, `${g.ident} (${g.node})`),
    h('p', { class: 'muted' }, `${g.total} state(s); ${STATUSES.filter((x) => g.counts[x]).map((x) => `${x} ${g.counts[x]}`).join(', ')}`),
    i.first_created_at ? h('p', { class: 'muted' }, `attempts up to ${i.attempts} · first ${i.first_created_at} · last change ${i.last_updated_at}`) : null,
    h('div', {}, filter),
    list, more,
    h('div', { id: 'state-detail' }, h('p', { class: 'muted', text: 'Click a state for its inputs, outputs and error.' })));
  reload();
}

// Reads the run's server-sent events (fetch, so the key goes in a header).
async function follow(ns, id, onEvent, signal) {
  const r = await fetch(`/v0/namespace/${enc(ns)}/run/${enc(id)}/events`,
    { headers: { 'x-api-key': key, accept: 'text/event-stream' }, signal });
  if (!r.ok || !r.body) return;
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true }).replace(/\r\n/g, '\n');
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const ev = {};
      for (const line of buf.slice(0, cut).split('\n')) {
        const i = line.indexOf(':');
        if (i > 0) ev[line.slice(0, i)] = line.slice(i + 1).trimStart();
      }
      buf = buf.slice(cut + 2);
      if (ev.data) onEvent(ev);
    }
  }
}

function runPage(ns, id) {
  crumbs(ns, id);
  const abort = new AbortController();
  const log = [];
  let template = null;
  let selected = null;
  let pending = false;
  let last = 0;
  const draw = async () => {
    last = Date.now();
    const run = await api(`/v0/namespace/${enc(ns)}/run/${enc(id)}`);
    if (!template) template = await api(`/v0/namespace/${enc(ns)}/graph/${enc(run.graph_name)}`).catch(() => ({ nodes: [] }));
    const summary = await api(`/v0/namespace/${enc(ns)}/run/${enc(id)}/nodes`);
    const laid = layout(summary, template);
    const onPick = (g) => { selected = g.ident; pickGroup(ns, run, g); };
    show(
      h('div', { class: 'summary' },
        h('b', {}, run.graph_name),
        h('span', { class: `badge ${run.status}`, 'data-testid': 'run-status' }, run.status),
        h('span', {}, 'done ', h('b', { 'data-testid': 'count-success', text: run.success_count }), ` of `,
          h('b', { 'data-testid': 'count-total', text: run.total_count })),
        h('span', {}, 'pending ', h('b', { 'data-testid': 'count-pending', text: run.pending_count })),
        h('span', {}, 'errored ', h('b', { 'data-testid': 'count-errored', text: run.errored_count })),
        h('span', { class: 'muted' }, run.status === 'PENDING' ? 'live' : 'ended')),
      legend(),
      h('div', { class: 'canvas' }, drawGraph(laid, onPick)),
      h('div', { class: 'events', 'data-testid': 'events' }, log.slice(-LOG_KEPT).map((l) => h('div', { text: l }))));
    if (selected && laid.groups.has(selected) && !$('#details').hidden) {
      $(`[data-testid="box-${CSS.escape(selected)}"]`)?.classList.add('selected');
    }
  };
  // Redraws at most twice a second while events arrive, and every 3 s anyway.
  const soon = () => {
    if (pending) return;
    pending = true;
    setTimeout(() => { pending = false; draw().catch(failed); }, Math.max(0, 500 - (Date.now() - last)));
  };
  // Keeps the latest events only: a 100k-wide run sends hundreds of thousands.
  const onEvent = (ev) => {
    log.push(`${ev.event || 'event'} ${ev.id || ''}`);
    if (log.length > 2 * LOG_KEPT) log.splice(0, log.length - LOG_KEPT);
    soon();
  };
  follow(ns, id, onEvent, abort.signal)
    .catch((e) => { if (e.name !== 'AbortError') console.warn(e); });
  const stop = every(3000, draw);
  return () => { stop(); abort.abort(); $('#details').hidden = true; };
}

function route() {
  stopCurrent();
  stopCurrent = () => {};
  $('#key').value = key ? '••••••••' : '';
  if (!key) {
    crumbs();
    show(h('p', { 'data-testid': 'need-key' }, 'Enter an API key (x-api-key) above to see runs.'));
    return;
  }
  const m = location.hash.match(/^#\/ns\/([^/]+)(?:\/run\/([^/]+))?$/);
  try {
    if (!m) { namespacesPage().catch(failed); return; }
    const ns = decodeURIComponent(m[1]);
    stopCurrent = m[2] ? runPage(ns, decodeURIComponent(m[2])) : runsPage(ns);
  } catch (e) { failed(e); }
}

$('#keyform').addEventListener('submit', (e) => {
  e.preventDefault();
  const v = $('#key').value.trim();
  if (v && v !== '••••••••') {
    key = v;
    localStorage.setItem('exo.key', key);
  }
  route();
});
window.addEventListener('hashchange', route);
route();
