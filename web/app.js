// The imgate demo page: log in, chat single and in groups, unread counts and read receipts, on
// web/imgate.js. State lives in `state`; every change re-renders the affected part from it.
// Everything received is shown with textContent (never parsed as HTML).

import { ImgateClient, ConvType, KickReason, defaultUrl, textOf, toU64 } from '/imgate.js';

const $ = (id) => document.getElementById(id);

const state = {
  client: null,
  me: null, // BigInt uid
  convs: new Map(), // "type:id" -> conversation
  current: null, // the open conversation
  pendingSeq: 0,
};
window.imgateDemo = state; // for the console

function keyOf(convType, convId) {
  return `${convType}:${convId}`;
}

function conv(convType, convId) {
  const key = keyOf(convType, convId);
  let c = state.convs.get(key);
  if (!c) {
    c = {
      key, convType, convId: toU64(convId), name: '',
      latestMsgId: 0n, unread: 0, readSent: 0n, peerReadUpTo: 0n,
      msgs: new Map(), loaded: false,
    };
    state.convs.set(key, c);
  }
  return c;
}

const maxId = (a, b) => (a > b ? a : b);

function title(c) {
  if (c.convType === ConvType.GROUP) return c.name ? `${c.name} (group ${c.convId})` : `Group ${c.convId}`;
  return `User ${c.convId}`;
}

function toast(text) {
  const div = document.createElement('div');
  div.textContent = text;
  $('log').append(div);
  setTimeout(() => div.remove(), 4000);
}

function setStatus(text, online) {
  $('status').textContent = text;
  $('status').className = `status ${online ? 'online' : 'offline'}`;
}

function timeOf(ms) {
  if (!ms) return '';
  return new Date(Number(ms)).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

// -- messages ------------------------------------------------------------------------------------

/** Adds a pushed or pulled PushMsg to its conversation. */
function addMessage(msg) {
  const c = conv(msg.convType, msg.convId);
  const id = msg.msgId.toString();
  if (!c.msgs.has(id)) {
    c.msgs.set(id, {
      msgId: msg.msgId, from: msg.from, text: textOf(msg), time: msg.serverTimeMs, state: 'sent',
    });
  }
  c.latestMsgId = maxId(c.latestMsgId, msg.msgId);
  return c;
}

function lastText(c) {
  let last = null;
  for (const m of c.msgs.values()) if (m.msgId !== null && (!last || m.msgId > last.msgId)) last = m;
  if (!last) return '';
  return last.from === state.me ? `You: ${last.text}` : last.text;
}

async function markRead(c) {
  c.unread = 0;
  if (c.latestMsgId === 0n || c.latestMsgId <= c.readSent) return;
  c.readSent = c.latestMsgId;
  try {
    await state.client.read({ convType: c.convType, convId: c.convId, readUpTo: c.latestMsgId });
  } catch (e) {
    toast(`READ failed: ${e.message}`);
  }
}

// -- rendering -------------------------------------------------------------------------------------

function renderConvs() {
  const list = $('convs');
  list.replaceChildren();
  const convs = [...state.convs.values()].sort((a, b) => (a.latestMsgId === b.latestMsgId ? 0 : a.latestMsgId > b.latestMsgId ? -1 : 1));
  let total = 0;
  for (const c of convs) {
    total += c.unread;
    const li = document.createElement('li');
    li.dataset.conv = c.key;
    if (c === state.current) li.classList.add('active');
    const avatar = document.createElement('span');
    avatar.className = c.convType === ConvType.GROUP ? 'avatar group' : 'avatar';
    avatar.textContent = c.convType === ConvType.GROUP ? 'G' : String(c.convId).slice(-2);
    const body = document.createElement('div');
    const name = document.createElement('div');
    name.className = 'conv-name';
    name.textContent = title(c);
    const preview = document.createElement('div');
    preview.className = 'preview';
    preview.textContent = lastText(c);
    body.append(name, preview);
    li.append(avatar, body);
    if (c.unread > 0) {
      const badge = document.createElement('span');
      badge.className = 'badge';
      badge.textContent = String(c.unread);
      li.append(badge);
    }
    li.addEventListener('click', () => openConv(c));
    list.append(li);
  }
  $('total-unread').hidden = total === 0;
  $('total-unread').textContent = `${total} unread`;
  document.title = total > 0 ? `(${total}) imgate demo` : 'imgate demo';
}

function renderMessages() {
  const c = state.current;
  const list = $('messages');
  list.replaceChildren();
  if (!c) return;
  const msgs = [...c.msgs.values()].sort((a, b) => {
    if (a.msgId === null || b.msgId === null) return (a.msgId === null) - (b.msgId === null);
    return a.msgId === b.msgId ? 0 : a.msgId < b.msgId ? -1 : 1;
  });
  for (const m of msgs) {
    const mine = m.from === state.me;
    const li = document.createElement('li');
    li.className = mine ? 'msg mine' : 'msg';
    if (m.msgId !== null) li.dataset.msgId = m.msgId.toString();
    const bubble = document.createElement('div');
    bubble.className = 'bubble';
    bubble.textContent = m.text;
    const meta = document.createElement('div');
    meta.className = 'meta';
    const parts = [];
    if (!mine && c.convType === ConvType.GROUP) parts.push(`from ${m.from}`);
    parts.push(timeOf(m.time));
    meta.textContent = parts.filter(Boolean).join(' · ');
    if (mine) {
      const receipt = document.createElement('span');
      receipt.className = 'receipt';
      if (m.state === 'sending') receipt.textContent = ' · sending…';
      else if (m.state === 'failed') receipt.textContent = ' · not sent';
      else if (c.convType === ConvType.SINGLE && m.msgId <= c.peerReadUpTo) {
        receipt.textContent = ' · ✓✓ Read';
        receipt.classList.add('read');
      } else receipt.textContent = ' · ✓ Sent';
      meta.append(receipt);
    }
    li.append(bubble, meta);
    list.append(li);
  }
  list.scrollTop = list.scrollHeight;
}

function render() {
  renderConvs();
  renderMessages();
}

// -- actions ----------------------------------------------------------------------------------------

async function openConv(c) {
  state.current = c;
  $('conv-title').textContent = title(c);
  $('conv-info').textContent = c.convType === ConvType.SINGLE ? 'single chat' : '';
  $('composer-input').disabled = false;
  $('send').disabled = false;
  $('composer-input').focus();
  render();
  if (!c.loaded) {
    try {
      for (const msg of await state.client.latest(c.convType, c.convId, 50)) addMessage(msg);
      c.loaded = true;
    } catch (e) {
      toast(`PULL failed: ${e.message}`);
    }
  }
  if (c.convType === ConvType.GROUP) {
    state.client.groupMembers(c.convId)
      .then((members) => { if (state.current === c) $('conv-info').textContent = `members: ${members.join(', ')}`; })
      .catch(() => {});
  }
  if (state.current === c) await markRead(c);
  render();
}

async function sendText(text) {
  const c = state.current;
  if (!c || text === '') return;
  const temp = `pending:${state.pendingSeq++}`;
  const entry = { msgId: null, from: state.me, text, time: BigInt(Date.now()), state: 'sending' };
  c.msgs.set(temp, entry);
  render();
  try {
    const resp = await state.client.sendText(c.convType, c.convId, text);
    c.msgs.delete(temp);
    c.msgs.set(resp.msgId.toString(), { ...entry, msgId: resp.msgId, time: resp.serverTimeMs, state: 'sent' });
    c.latestMsgId = maxId(c.latestMsgId, resp.msgId);
    c.readSent = maxId(c.readSent, resp.msgId); // one's own messages are never unread
  } catch (e) {
    entry.state = 'failed';
    toast(`SEND failed: ${e.message}`);
  }
  render();
}

// -- events from the gate ---------------------------------------------------------------------------

function onPush(e) {
  const msg = e.detail;
  const c = addMessage(msg);
  if (msg.from !== state.me) {
    if (c === state.current && document.visibilityState === 'visible') markRead(c).then(render);
    else c.unread += 1;
  }
  render();
}

async function onNotify(e) {
  for (const u of e.detail.updates) {
    const c = conv(u.convType, u.convId);
    c.latestMsgId = maxId(c.latestMsgId, u.latestMsgId);
    c.unread = u.unread;
    if (c === state.current) {
      const held = [...c.msgs.values()].reduce((m, x) => (x.msgId !== null && x.msgId > m ? x.msgId : m), 0n);
      try {
        const resp = await state.client.pull({ convType: c.convType, convId: c.convId, afterMsgId: held, limit: 200 });
        resp.msgs.forEach(addMessage);
      } catch (err) {
        toast(`PULL failed: ${err.message}`);
      }
      await markRead(c);
    }
  }
  render();
}

function onReceipt(e) {
  const r = e.detail;
  const c = conv(r.convType, r.convId);
  if (r.reader === state.me) {
    // Read on another of my devices.
    c.readSent = maxId(c.readSent, r.readUpTo);
    if (r.readUpTo >= c.latestMsgId) c.unread = 0;
  } else {
    c.peerReadUpTo = maxId(c.peerReadUpTo, r.readUpTo);
  }
  render();
}

// -- wiring ---------------------------------------------------------------------------------------------

async function login(event) {
  event.preventDefault();
  $('login-error').hidden = true;
  let uid;
  try {
    uid = toU64($('uid').value.trim());
    if (uid === 0n) throw new Error('0');
  } catch {
    $('login-error').textContent = 'The user id must be a positive whole number.';
    $('login-error').hidden = false;
    return;
  }
  $('login').disabled = true;
  const client = new ImgateClient(defaultUrl());
  try {
    setStatus('connecting…', false);
    await client.connect();
    const resp = await client.login({ uid, token: $('token').value, deviceId: $('device').value });
    state.client = client;
    state.me = uid;
    client.addEventListener('push', onPush);
    client.addEventListener('notify', onNotify);
    client.addEventListener('receipt', onReceipt);
    client.addEventListener('kick', (k) => toast(`Kicked: ${KickReason[k.detail.reason] ?? k.detail.reason}`));
    client.addEventListener('error', (err) => toast(`Error ${err.detail.code}: ${err.detail.message}`));
    client.addEventListener('close', () => {
      setStatus('offline', false);
      $('composer-input').disabled = true;
      $('send').disabled = true;
    });
    setStatus(`online as ${uid} · ${resp.gateId}`, true);
    $('me-name').textContent = `User ${uid}`;
    $('login-view').hidden = true;
    $('chat-view').hidden = false;
    const sync = await client.sync();
    for (const u of sync.convs) {
      const c = conv(u.convType, u.convId);
      c.latestMsgId = maxId(c.latestMsgId, u.latestMsgId);
      c.unread = u.unread;
    }
    render();
  } catch (e) {
    client.close();
    setStatus('offline', false);
    $('login-error').textContent = `Login failed: ${e.message}`;
    $('login-error').hidden = false;
  } finally {
    $('login').disabled = false;
  }
}

function parseIds(text) {
  return text.split(/[\s,]+/).filter(Boolean).map((s) => toU64(s));
}

function wire() {
  $('device').value = `web-${Math.random().toString(16).slice(2, 8)}`;
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', async () => {
    try { await state.client.logout(); } catch { /* closed anyway */ }
    location.reload();
  });
  $('open-form').addEventListener('submit', (e) => {
    e.preventDefault();
    try {
      const uid = toU64($('peer-uid').value.trim());
      $('peer-uid').value = '';
      openConv(conv(ConvType.SINGLE, uid));
    } catch {
      toast('Enter a user id');
    }
  });
  $('create-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const name = $('group-name').value.trim() || 'group';
      const gid = await state.client.createGroup(name, parseIds($('group-members').value));
      $('group-name').value = '';
      $('group-members').value = '';
      const c = conv(ConvType.GROUP, gid);
      c.name = name;
      toast(`Group ${gid} created`);
      await openConv(c);
    } catch (err) {
      toast(`Create failed: ${err.message}`);
    }
  });
  $('join-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const gid = toU64($('group-id').value.trim());
      await state.client.joinGroup(gid);
      $('group-id').value = '';
      toast(`Joined group ${gid}`);
      await openConv(conv(ConvType.GROUP, gid));
    } catch (err) {
      toast(`Join failed: ${err.message}`);
    }
  });
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = $('composer-input').value;
    $('composer-input').value = '';
    sendText(text.trim());
  });
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && state.current) markRead(state.current).then(render);
  });
}

wire();
