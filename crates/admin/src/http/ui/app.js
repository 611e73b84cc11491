// Warren's dashboard: a single page over the management API (/api), in
// plain JavaScript. Logs in with HTTP basic auth (kept for the session),
// shows one tab at a time and refreshes it every few seconds.
'use strict';

const state = {
  auth: sessionStorage.getItem('warren-auth'),
  tab: 'overview',
  timer: null,
  selected: null, // {vhost, name} of the queue shown in detail
  vhosts: [],
};

const $ = sel => document.querySelector(sel);
const enc = s => encodeURIComponent(s);

function basic(user, pass) {
  const bytes = new TextEncoder().encode(`${user}:${pass}`);
  let bin = '';
  bytes.forEach(b => { bin += String.fromCharCode(b); });
  return btoa(bin);
}

async function api(method, path, body) {
  const r = await fetch('/api' + path, {
    method,
    headers: { Authorization: 'Basic ' + state.auth, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 401 && path === '/whoami') throw new Error('Login failed');
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error((data && data.reason) || `${r.status} ${r.statusText}`);
  return data;
}

function say(text, error) {
  const el = $('#status');
  el.textContent = text;
  el.className = error ? 'error' : '';
}

function num(v) { return v === undefined || v === null ? '' : Number(v).toLocaleString('en-US'); }
function rate(o, key) {
  const d = o && o[key + '_details'];
  return d ? `${(Math.round(d.rate * 10) / 10).toLocaleString('en-US')}/s` : '';
}
function bytes(n) {
  if (!n) return '0 B';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  const i = Math.min(u.length - 1, Math.floor(Math.log2(n) / 10));
  return `${(n / Math.pow(1024, i)).toFixed(i ? 1 : 0)} ${u[i]}`;
}

// Renders rows into a table: columns are [title, row => value or Node, {num, key}].
function table(el, columns, rows, rowAttrs) {
  el.innerHTML = '';
  const head = el.createTHead().insertRow();
  for (const [title, , opt] of columns) {
    const th = document.createElement('th');
    th.textContent = title;
    if (opt && opt.num) th.className = 'num';
    head.append(th);
  }
  const body = el.createTBody();
  if (!rows.length) {
    const td = body.insertRow().insertCell();
    td.colSpan = columns.length;
    td.textContent = 'none';
    return;
  }
  for (const row of rows) {
    const tr = body.insertRow();
    if (rowAttrs) rowAttrs(tr, row);
    for (const [, get, opt] of columns) {
      const td = tr.insertCell();
      const v = get(row);
      if (v instanceof Node) td.append(v); else td.textContent = v === undefined || v === null ? '' : v;
      if (opt && opt.num) td.className = 'num';
      if (opt && opt.key) td.dataset.col = opt.key;
    }
  }
}

function button(label, onclick, cls) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = label;
  b.className = 'small ' + (cls || '');
  b.addEventListener('click', e => { e.stopPropagation(); onclick(); });
  return b;
}

async function act(what, f) {
  try {
    await f();
    say(what);
    await refresh();
  } catch (e) {
    say(`${what} failed: ${e.message}`, true);
  }
}

// Samples (newest first, cumulative counts) into per-second rates.
function ratesOf(samples) {
  const pts = [];
  for (let i = 0; i + 1 < (samples || []).length; i++) {
    const a = samples[i], b = samples[i + 1];
    const dt = (a.timestamp - b.timestamp) / 1000;
    if (dt > 0) pts.push([a.timestamp, Math.max(0, (a.sample - b.sample) / dt)]);
  }
  return pts.reverse();
}
function valuesOf(samples) { return (samples || []).map(s => [s.timestamp, s.sample]).reverse(); }

const views = {
  async overview() {
    const o = await api('GET', '/overview?msg_rates_age=600&msg_rates_incr=5&lengths_age=600&lengths_incr=5');
    const qt = o.queue_totals || {}, ot = o.object_totals || {}, ms = o.message_stats || {};
    const stats = [
      ['Ready', qt.messages_ready], ['Unacked', qt.messages_unacknowledged], ['Total', qt.messages],
      ['Connections', ot.connections], ['Channels', ot.channels], ['Exchanges', ot.exchanges],
      ['Queues', ot.queues], ['Consumers', ot.consumers],
    ];
    $('#totals').innerHTML = '';
    for (const [label, n] of stats) {
      const d = document.createElement('div');
      d.className = 'stat';
      d.dataset.stat = label.toLowerCase();
      d.innerHTML = `<div class="n">${num(n || 0)}</div><div class="l">${label}</div>`;
      $('#totals').append(d);
    }
    const rates = ['publish', 'deliver_get', 'ack', 'confirm', 'redeliver']
      .map(k => ({ label: k, points: ratesOf((ms[k + '_details'] || {}).samples) }));
    Chart.draw($('#rates-chart'), rates, '/s');
    Chart.legend($('#rates-legend'), rates, v => `${Math.round(v * 10) / 10}/s`);
    const lengths = [['messages_ready', 'ready'], ['messages_unacknowledged', 'unacked']]
      .map(([k, label]) => ({ label, points: valuesOf((qt[k + '_details'] || {}).samples) }));
    Chart.draw($('#lengths-chart'), lengths, '');
    Chart.legend($('#lengths-legend'), lengths, num);
    try {
      const nodes = await api('GET', '/nodes');
      const n = nodes[0] || {};
      table($('#node'), [['Name', r => r.name], ['Memory', r => `${bytes(r.mem_used)} of ${bytes(r.mem_limit)}`],
        ['Disk free', r => `${bytes(r.disk_free)} (limit ${bytes(r.disk_free_limit)})`],
        ['File descriptors', r => `${num(r.fd_used)} / ${num(r.fd_total)}`],
        ['Alarms', r => (r.mem_alarm ? 'memory ' : '') + (r.disk_free_alarm ? 'disk' : '') || 'none'],
        ['Uptime', r => `${Math.round((r.uptime || 0) / 1000)} s`], ['Version', () => o.product_version]], [n]);
    } catch (e) {
      $('#node').textContent = 'Node details need the monitoring tag.';
    }
  },

  async connections() {
    const rows = await api('GET', '/connections');
    table($('#connections-table'), [
      ['Name', r => r.name], ['User', r => r.user], ['Vhost', r => r.vhost],
      ['Client', r => (r.client_properties || {}).product || ''], ['TLS', r => (r.ssl ? 'yes' : 'no')],
      ['Channels', r => r.channels, { num: true }], ['From client', r => rate(r, 'recv_oct'), { num: true }],
      ['To client', r => rate(r, 'send_oct'), { num: true }],
      ['', r => button('Close', () => {
        if (confirm(`Close connection ${r.name}?`)) {
          act('Connection closed', () => api('DELETE', `/connections/${enc(r.name)}`));
        }
      }, 'danger')],
    ], rows, (tr, r) => { tr.dataset.connection = r.name; });
  },

  async channels() {
    const rows = await api('GET', '/channels');
    table($('#channels-table'), [
      ['Channel', r => r.name], ['User', r => r.user], ['Vhost', r => r.vhost],
      ['Mode', r => (r.confirm ? 'confirm' : r.transactional ? 'tx' : '')],
      ['Prefetch', r => r.prefetch_count, { num: true }], ['Unacked', r => r.messages_unacknowledged, { num: true }],
      ['Consumers', r => r.consumer_count, { num: true }],
      ['Publish', r => rate(r.message_stats, 'publish'), { num: true }],
      ['Deliver', r => rate(r.message_stats, 'deliver_get'), { num: true }],
      ['Ack', r => rate(r.message_stats, 'ack'), { num: true }],
    ], rows);
  },

  async exchanges() {
    const rows = await api('GET', '/exchanges');
    table($('#exchanges-table'), [
      ['Vhost', r => r.vhost], ['Name', r => r.name || '(AMQP default)'], ['Type', r => r.type],
      ['Features', r => [r.durable ? 'D' : '', r.auto_delete ? 'AD' : '', r.internal ? 'I' : ''].join(' ')],
      ['In', r => rate(r.message_stats, 'publish_in'), { num: true }],
      ['Out', r => rate(r.message_stats, 'publish_out'), { num: true }],
      ['', r => (r.name && !r.name.startsWith('amq.') ? button('Delete', () => {
        if (confirm(`Delete exchange ${r.name}?`)) {
          act('Exchange deleted', () => api('DELETE', `/exchanges/${enc(r.vhost)}/${enc(r.name)}`));
        }
      }, 'danger') : '')],
    ], rows, (tr, r) => { tr.dataset.exchange = r.name; });
  },

  async queues() {
    const rows = await api('GET', '/queues');
    table($('#queues-table'), [
      ['Vhost', r => r.vhost], ['Name', r => r.name, { key: 'name' }], ['Type', r => r.type],
      ['Features', r => [r.durable ? 'D' : '', r.auto_delete ? 'AD' : '', r.exclusive ? 'Excl' : '',
        r.policy ? `policy ${r.policy}` : ''].join(' ')],
      ['Ready', r => num(r.messages_ready), { num: true, key: 'messages_ready' }],
      ['Unacked', r => num(r.messages_unacknowledged), { num: true, key: 'messages_unacknowledged' }],
      ['Total', r => num(r.messages), { num: true, key: 'messages' }],
      ['Consumers', r => r.consumers, { num: true, key: 'consumers' }],
      ['Incoming', r => rate(r.message_stats, 'publish'), { num: true }],
      ['Deliver/get', r => rate(r.message_stats, 'deliver_get'), { num: true }],
      ['Ack', r => rate(r.message_stats, 'ack'), { num: true }],
    ], rows, (tr, r) => {
      tr.className = 'link';
      tr.dataset.queue = r.name;
      tr.dataset.vhost = r.vhost;
      tr.addEventListener('click', () => { state.selected = { vhost: r.vhost, name: r.name }; views.queueDetail(); });
    });
    await views.queueDetail();
  },

  async queueDetail() {
    const panel = $('#queue-detail');
    if (!state.selected) { panel.hidden = true; return; }
    let q;
    try {
      q = await api('GET', `/queues/${enc(state.selected.vhost)}/${enc(state.selected.name)}`);
    } catch (e) {
      state.selected = null;
      panel.hidden = true;
      return;
    }
    panel.hidden = false;
    $('#qd-name').textContent = `${q.name} (vhost ${q.vhost})`;
    table($('#qd-info'), [
      ['Ready', r => num(r.messages_ready), { num: true, key: 'messages_ready' }],
      ['Unacked', r => num(r.messages_unacknowledged), { num: true }],
      ['Bytes', r => bytes(r.message_bytes), { num: true }], ['Consumers', r => r.consumers, { num: true }],
      ['Arguments', r => JSON.stringify(r.arguments)], ['Policy', r => r.policy || ''],
      ['Effective policy', r => JSON.stringify(r.effective_policy_definition || {})],
    ], [q]);
  },

  async links() {
    const [shovels, fed] = await Promise.all([api('GET', '/shovels'), api('GET', '/federation-links')]);
    const src = r => r.src_queue !== undefined ? `queue ${r.src_queue}` : `exchange ${r.src_exchange} (${r.src_exchange_key})`;
    const dest = r => r.dest_queue !== undefined ? `queue ${r.dest_queue}`
      : `exchange ${r.dest_exchange || '(same)'}${r.dest_exchange_key ? ` (${r.dest_exchange_key})` : ''}`;
    table($('#shovels-table'), [
      ['Vhost', r => r.vhost], ['Name', r => r.name], ['State', r => r.state, { key: 'state' }],
      ['Source', r => `${r.src_uri} ${src(r)}`], ['Destination', r => `${r.dest_uri} ${dest(r)}`],
      ['Moved', r => num(r.messages_transferred), { num: true, key: 'moved' }], ['Reason', r => r.reason || ''],
      ['', r => button('Restart', () => act('Shovel restarted',
        () => api('DELETE', `/shovels/vhost/${enc(r.vhost)}/${enc(r.name)}/restart`)))],
      ['', r => button('Delete', () => {
        if (confirm(`Delete shovel ${r.name}?`)) {
          act('Shovel deleted', () => api('DELETE', `/shovels/vhost/${enc(r.vhost)}/${enc(r.name)}`));
        }
      }, 'danger')],
    ], shovels, (tr, r) => { tr.dataset.shovel = r.name; });
    table($('#federation-table'), [
      ['Vhost', r => r.vhost], ['Upstream', r => r.upstream], ['URI', r => r.uri],
      ['Local', r => `${r.type} ${r.exchange || r.queue}`],
      ['Upstream name', r => r.upstream_exchange || r.upstream_queue],
      ['Status', r => r.status, { key: 'status' }], ['Moved', r => num(r.messages_transferred), { num: true }],
      ['Error', r => r.error || ''],
    ], fed, (tr, r) => { tr.dataset.link = r.id; });
  },

  async admin() {
    const [users, vhosts, policies] = await Promise.all([
      api('GET', '/users').catch(() => []), api('GET', '/vhosts'), api('GET', '/policies'),
    ]);
    table($('#users-table'), [['Name', r => r.name], ['Tags', r => r.tags.join(', ')],
      ['', r => button('Delete', () => {
        if (confirm(`Delete user ${r.name}?`)) act('User deleted', () => api('DELETE', `/users/${enc(r.name)}`));
      }, 'danger')]], users);
    table($('#vhosts-table'), [['Name', r => r.name], ['Messages', r => num(r.messages), { num: true }],
      ['Publish', r => rate(r.message_stats, 'publish'), { num: true }],
      ['', r => button('Delete', () => {
        if (confirm(`Delete vhost ${r.name} and everything in it?`)) {
          act('Virtual host deleted', () => api('DELETE', `/vhosts/${enc(r.name)}`));
        }
      }, 'danger')]], vhosts);
    table($('#policies-table'), [['Vhost', r => r.vhost], ['Name', r => r.name], ['Pattern', r => r.pattern],
      ['Apply to', r => r['apply-to']], ['Priority', r => r.priority, { num: true }],
      ['Definition', r => JSON.stringify(r.definition)],
      ['', r => button('Delete', () => act('Policy deleted',
        () => api('DELETE', `/policies/${enc(r.vhost)}/${enc(r.name)}`)), 'danger')]], policies);
  },
};

async function loadVhosts() {
  const vs = await api('GET', '/vhosts');
  state.vhosts = vs.map(v => v.name);
  document.querySelectorAll('.vhost-select').forEach(sel => {
    const cur = sel.value;
    sel.innerHTML = '';
    for (const v of state.vhosts) sel.append(new Option(v, v, false, v === cur));
  });
}

async function refresh() {
  try {
    await views[state.tab]();
    say(`Updated ${new Date().toLocaleTimeString()}`);
  } catch (e) {
    say(`Could not update: ${e.message}`, true);
  }
}

function schedule() {
  clearInterval(state.timer);
  const secs = Number($('#refresh').value);
  if (secs > 0) state.timer = setInterval(refresh, secs * 1000);
}

function show(tab) {
  state.tab = views[tab] ? tab : 'overview';
  document.querySelectorAll('.tab').forEach(s => { s.hidden = s.id !== state.tab; });
  document.querySelectorAll('nav a').forEach(a => a.classList.toggle('active', a.dataset.tab === state.tab));
  refresh();
}

async function start() {
  let me;
  try {
    me = await api('GET', '/whoami');
  } catch (e) {
    sessionStorage.removeItem('warren-auth');
    state.auth = null;
    $('#login').hidden = false;
    if (e.message) $('#login-error').textContent = e.message;
    return;
  }
  $('#login').hidden = true;
  $('#tabs').hidden = false;
  $('#who').hidden = false;
  $('#user').textContent = `${me.name} (${me.tags.join(', ') || 'no tags'})`;
  const wanted = new URLSearchParams(location.search).get('refresh');
  if (wanted) $('#refresh').value = wanted;
  await loadVhosts().catch(() => {});
  schedule();
  show(location.hash.slice(1) || 'overview');
}

function formData(form) {
  return Object.fromEntries(new FormData(form).entries());
}

function wire() {
  $('#login').addEventListener('submit', e => {
    e.preventDefault();
    state.auth = basic($('#username').value, $('#password').value);
    sessionStorage.setItem('warren-auth', state.auth);
    $('#login-error').textContent = '';
    start();
  });
  $('#logout').addEventListener('click', () => {
    sessionStorage.removeItem('warren-auth');
    location.hash = '';
    location.reload();
  });
  $('#refresh').addEventListener('change', schedule);
  window.addEventListener('hashchange', () => show(location.hash.slice(1)));
  $('#qd-purge').addEventListener('click', () => {
    const q = state.selected;
    if (q && confirm(`Purge all ready messages of ${q.name}?`)) {
      act('Queue purged', () => api('DELETE', `/queues/${enc(q.vhost)}/${enc(q.name)}/contents`));
    }
  });
  $('#qd-delete').addEventListener('click', () => {
    const q = state.selected;
    if (q && confirm(`Delete queue ${q.name}?`)) {
      act('Queue deleted', async () => {
        await api('DELETE', `/queues/${enc(q.vhost)}/${enc(q.name)}`);
        state.selected = null;
      });
    }
  });
  $('#qd-publish').addEventListener('submit', e => {
    e.preventDefault();
    const q = state.selected, f = formData(e.target);
    act('Message published', () => api('POST', `/exchanges/${enc(q.vhost)}/amq.default/publish`, {
      properties: { delivery_mode: f.persistent ? 2 : 1 }, routing_key: q.name,
      payload: f.payload || '', payload_encoding: 'string',
    }));
  });
  $('#qd-move').addEventListener('submit', e => {
    e.preventDefault();
    const q = state.selected, f = formData(e.target);
    // As RabbitMQ's management UI: a one-off shovel, removed when done.
    const local = `amqp:///${enc(q.vhost)}`;
    act('Moving messages', () => api('PUT', `/parameters/shovel/${enc(q.vhost)}/${enc(`Move from ${q.name}`)}`, {
      component: 'shovel', vhost: q.vhost, name: `Move from ${q.name}`, value: {
        'src-uri': local, 'src-queue': q.name, 'src-protocol': 'amqp091', 'src-prefetch-count': 1000,
        'src-delete-after': 'queue-length', 'dest-protocol': 'amqp091', 'dest-uri': local,
        'dest-add-forward-headers': false, 'ack-mode': 'on-confirm', 'dest-queue': f.dest,
      },
    }));
  });
  $('#qd-get').addEventListener('submit', async e => {
    e.preventDefault();
    const q = state.selected, f = formData(e.target);
    try {
      const msgs = await api('POST', `/queues/${enc(q.vhost)}/${enc(q.name)}/get`,
        { count: Number(f.count), ackmode: f.ackmode, encoding: 'auto', truncate: 50000 });
      $('#qd-messages').textContent = msgs.length ? msgs.map(m => `${m.redelivered ? '(redelivered) ' : ''}` +
        `${m.routing_key}: ${m.payload}`).join('\n') : 'Queue is empty';
      await refresh();
    } catch (err) {
      say(`Get failed: ${err.message}`, true);
    }
  });
  $('#queue-form').addEventListener('submit', e => {
    e.preventDefault();
    const f = formData(e.target);
    act('Queue added', () => api('PUT', `/queues/${enc(f.vhost)}/${enc(f.name)}`, { durable: !!f.durable }));
  });
  $('#exchange-form').addEventListener('submit', e => {
    e.preventDefault();
    const f = formData(e.target);
    act('Exchange added', () => api('PUT', `/exchanges/${enc(f.vhost)}/${enc(f.name)}`,
      { type: f.type, durable: !!f.durable }));
  });
  $('#user-form').addEventListener('submit', e => {
    e.preventDefault();
    const f = formData(e.target);
    act('User added', () => api('PUT', `/users/${enc(f.name)}`, { password: f.password, tags: f.tags }));
  });
  $('#vhost-form').addEventListener('submit', e => {
    e.preventDefault();
    const f = formData(e.target);
    act('Virtual host added', async () => { await api('PUT', `/vhosts/${enc(f.name)}`); await loadVhosts(); });
  });
  $('#policy-form').addEventListener('submit', e => {
    e.preventDefault();
    const f = formData(e.target);
    let definition;
    try { definition = JSON.parse(f.definition); } catch (err) { say('Definition is not JSON', true); return; }
    act('Policy added', () => api('PUT', `/policies/${enc(f.vhost)}/${enc(f.name)}`, {
      pattern: f.pattern, definition, priority: Number(f.priority || 0), 'apply-to': f['apply-to'],
    }));
  });
}

wire();
if (state.auth) start(); else $('#login').hidden = false;
