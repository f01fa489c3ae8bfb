// The app's state and its sync with the server (no DOM here): conversations, messages
// by seq, pending sends, receipts, typing and presence. `change` events tell the view
// what to draw again.
import { ApiError } from "./api.js";
import { Live } from "./live.js";

const PAGE = 50;
const TYPING_SHOWN_MS = 5_000;
const TYPING_EVERY_MS = 2_000;
/** Log entries that change another message and are not shown on their own. */
const MODIFIERS = new Set(["chatd/reaction", "chatd/edit", "chatd/pin"]);

export function isShown(message) {
  return !MODIFIERS.has(message.content_type);
}

function newClientMsgId() {
  const random = crypto.getRandomValues(new Uint32Array(3));
  return `web-${Date.now().toString(36)}-${Array.from(random, (n) => n.toString(36)).join("")}`;
}

function attachmentOf(upload) {
  const type = upload.content_type || "";
  const kind = type.startsWith("image/") && upload.thumbnails && upload.thumbnails.length
    ? "image" : type.startsWith("video/") ? "video" : type.startsWith("audio/") ? "audio" : "file";
  return {
    media_id: upload.media_id, kind, content_type: type, size: upload.size,
    filename: upload.filename, width: upload.width || 0, height: upload.height || 0,
    thumbnails: (upload.thumbnails || []).map((t) => t.size),
  };
}

export class Conversation {
  constructor(data) {
    this.msgs = new Map();
    this.pending = [];
    this.marks = new Map();
    this.typing = new Map();
    this.loaded = false;
    this.loading = false;
    this.oldest = 0;
    this.newest = 0;
    this.hasMore = false;
    this.filling = false;
    this.update(data);
  }

  update(data) {
    // Optional fields are left out when not set: an old value must not outlive them.
    for (const key of ["request", "blocked", "encrypted", "photo_media_id"]) delete this[key];
    Object.assign(this, data);
    this.id = data.conversation_id;
  }

  get sortedSeqs() {
    return Array.from(this.msgs.keys()).sort((a, b) => a - b);
  }

  /** The newest message worth a preview line. */
  get lastShown() {
    let best = null;
    for (const m of this.msgs.values()) {
      if (isShown(m) && (!best || m.seq > best.seq)) best = m;
    }
    const pending = this.pending[this.pending.length - 1];
    if (pending && (!best || pending.ts >= best.ts)) return pending;
    return best;
  }
}

export class ChatClient extends EventTarget {
  constructor(api, session) {
    super();
    this.api = api;
    this.session = session;
    this.me = null;
    this.convs = new Map();
    this.requests = new Map();
    this.invites = [];
    this.users = new Map();
    this.userLoads = new Map();
    this.presence = new Map();
    this.currentId = null;
    this.live = null;
    this.acks = new Map();
    this.ackScheduled = false;
    this.lastTypingSent = new Map();
    this.connection = "connecting";
    this.visible = document.visibilityState === "visible";
    this.blocks = new Set();
    document.addEventListener("visibilitychange", () => {
      this.visible = document.visibilityState === "visible";
      if (this.visible && this.current) this.markRead(this.current);
    });
  }

  emit(what, detail = {}) {
    this.dispatchEvent(new CustomEvent("change", { detail: { what, ...detail } }));
  }

  get current() {
    return this.currentId ? this.convs.get(this.currentId) || this.requests.get(this.currentId) : null;
  }

  conversation(id) {
    return this.convs.get(id) || this.requests.get(id) || null;
  }

  // -- start and stop ------------------------------------------------------------------

  async start() {
    this.me = await this.api.get("/me");
    this.users.set(this.me.user_id, this.me);
    await this.refreshConversations();
    this.live = new Live({
      token: this.session.token,
      onframe: (frame) => this.#onFrame(frame),
      onstate: (state, detail) => this.#onLiveState(state, detail),
      onunauthorized: (reason) => this.emit("unauthorized", { reason }),
    });
    this.live.connect();
    this.refreshInvites().catch(() => {});
    this.refreshBlocks().catch(() => {});
  }

  stop() {
    if (this.live) this.live.stop();
    this.live = null;
  }

  async refreshConversations() {
    const [main, requests] = await Promise.all([
      this.api.get("/conversations"), this.api.get("/conversations?requests=1"),
    ]);
    const seen = new Set();
    for (const data of main.conversations) {
      seen.add(data.conversation_id);
      this.#upsert(this.convs, data);
      this.requests.delete(data.conversation_id);
    }
    for (const id of Array.from(this.convs.keys())) if (!seen.has(id)) this.convs.delete(id);
    const seenRequests = new Set();
    for (const data of requests.conversations) {
      seenRequests.add(data.conversation_id);
      this.#upsert(this.requests, data);
    }
    for (const id of Array.from(this.requests.keys())) {
      if (!seenRequests.has(id)) this.requests.delete(id);
    }
    for (const conv of [...this.convs.values(), ...this.requests.values()]) {
      for (const member of conv.members) this.user(member.user_id);
      if (!conv.loaded && conv.msgs.size === 0 && conv.last_seq > 0) this.#loadPreview(conv);
    }
    this.emit("list");
  }

  #upsert(map, data) {
    const existing = map.get(data.conversation_id) || this.conversation(data.conversation_id);
    if (existing) {
      const unread = existing.unread;
      existing.update(data);
      if (this.currentId === existing.id && this.visible) existing.unread = 0;
      else if (data.unread === undefined) existing.unread = unread;
      map.set(existing.id, existing);
      return existing;
    }
    const conv = new Conversation(data);
    map.set(conv.id, conv);
    return conv;
  }

  async #loadPreview(conv) {
    try {
      const page = await this.api.get(`/messages/${conv.id}?limit=5`);
      for (const m of page.messages) if (!conv.msgs.has(m.seq)) conv.msgs.set(m.seq, m);
      this.emit("list");
    } catch { /* the list shows no preview */ }
  }

  async refreshInvites() {
    this.invites = (await this.api.get("/invites")).invites;
    this.emit("list");
  }

  async refreshBlocks() {
    this.blocks = new Set((await this.api.get("/blocks")).blocks.map((b) => b.user_id));
    this.emit("conv");
  }

  // -- users ---------------------------------------------------------------------------

  /** A profile from the cache, fetching it once in the background. */
  user(id) {
    const known = this.users.get(id);
    if (known) return known;
    if (!this.userLoads.has(id)) {
      const load = this.api.get(`/users/${id}`).then((profile) => {
        this.users.set(id, profile);
        if (profile.last_seen && !this.presence.has(id)) {
          this.presence.set(id, { online: false, last_seen: profile.last_seen });
        }
        this.emit("users");
      }).catch(() => {
        this.users.set(id, { user_id: id, handle: "", display_name: "Unknown user", status: "" });
      });
      this.userLoads.set(id, load);
    }
    return null;
  }

  nameOf(id) {
    if (this.me && id === this.me.user_id) return "You";
    const profile = this.user(id);
    return profile ? profile.display_name || profile.handle : "…";
  }

  /** The other member of a direct conversation (yourself for a note to self). */
  peerOf(conv) {
    if (conv.kind !== "direct") return null;
    const other = conv.members.find((m) => m.user_id !== this.me.user_id);
    return other ? other.user_id : this.me.user_id;
  }

  titleOf(conv) {
    if (conv.kind === "group") return conv.name || "Group";
    const peer = this.peerOf(conv);
    if (peer === this.me.user_id) return `${this.me.display_name} (you)`;
    const profile = this.user(peer);
    return profile ? profile.display_name || profile.handle : "…";
  }

  isAdmin(conv, userId = this.me.user_id) {
    return conv.members.some((m) => m.user_id === userId && m.role === "admin");
  }

  // -- opening and paging --------------------------------------------------------------

  async open(id) {
    this.currentId = id;
    const conv = this.current;
    this.emit("open");
    if (!conv) return;
    if (!conv.loaded) await this.loadLatest(conv);
    this.markRead(conv);
    const peer = this.peerOf(conv);
    if (peer && peer !== this.me.user_id) this.#refreshPeer(peer);
    this.#loadMarks(conv);
  }

  close() {
    this.currentId = null;
    this.emit("open");
  }

  async #refreshPeer(id) {
    try {
      const profile = await this.api.get(`/users/${id}`);
      this.users.set(id, profile);
      const known = this.presence.get(id);
      if (!known || !known.online) {
        this.presence.set(id, { online: false, last_seen: profile.last_seen || null });
      }
      this.emit("conv");
    } catch { /* keeps what it had */ }
  }

  async loadLatest(conv) {
    if (conv.loading) return;
    conv.loading = true;
    try {
      const page = await this.api.get(`/messages/${conv.id}?limit=${PAGE}`);
      for (const m of page.messages) this.#store(conv, m, false);
      const seqs = page.messages.map((m) => m.seq);
      conv.oldest = seqs.length ? seqs[0] : conv.last_seq + 1;
      conv.newest = seqs.length ? seqs[seqs.length - 1] : conv.last_seq;
      conv.hasMore = page.has_more;
      conv.loaded = true;
      this.#advanceNewest(conv);
    } finally {
      conv.loading = false;
    }
    this.emit("messages", { id: conv.id });
  }

  /** The page before the oldest held (scrolling up). Returns whether it added any. */
  async loadOlder(conv) {
    if (!conv.loaded || !conv.hasMore || conv.loading) return false;
    conv.loading = true;
    let added = false;
    try {
      const page = await this.api.get(`/messages/${conv.id}?before=${conv.oldest}&limit=${PAGE}`);
      for (const m of page.messages) this.#store(conv, m, false);
      if (page.messages.length) {
        conv.oldest = page.messages[0].seq;
        added = true;
      }
      conv.hasMore = page.has_more;
    } finally {
      conv.loading = false;
    }
    this.emit("messages", { id: conv.id, older: true });
    return added;
  }

  /** Fetch what is missing after the newest contiguous seq (a gap after a reconnect). */
  async fillGap(conv) {
    if (!conv.loaded || conv.filling) return;
    conv.filling = true;
    try {
      for (let rounds = 0; rounds < 50; rounds += 1) {
        const page = await this.api.get(`/messages/${conv.id}?after=${conv.newest}&limit=200`);
        for (const m of page.messages) this.#store(conv, m, false);
        if (page.messages.length) {
          conv.newest = Math.max(conv.newest, page.messages[page.messages.length - 1].seq);
        }
        this.#advanceNewest(conv);
        if (!page.has_more) break;
      }
    } catch { /* retried at the next reconnect or message */ } finally {
      conv.filling = false;
    }
    this.emit("messages", { id: conv.id });
  }

  #advanceNewest(conv) {
    while (conv.msgs.has(conv.newest + 1)) conv.newest += 1;
  }

  async #loadMarks(conv) {
    // The receipt watermarks of the others are sent live as they move; on opening, the
    // status of our newest message tells where they are now.
    let mine = null;
    for (const m of conv.msgs.values()) {
      if (m.sender_id === this.me.user_id && isShown(m) && m.content_type !== "chatd/system"
          && (!mine || m.seq > mine.seq)) mine = m;
    }
    if (!mine) return;
    try {
      const status = await this.api.get(`/messages/${conv.id}/${mine.seq}/status`);
      for (const member of status.members) {
        if (member.user_id === this.me.user_id) continue;
        const mark = conv.marks.get(member.user_id) || { d: 0, r: 0 };
        if (member.delivered) mark.d = Math.max(mark.d, mine.seq);
        if (member.read) mark.r = Math.max(mark.r, mine.seq);
        conv.marks.set(member.user_id, mark);
      }
      this.emit("messages", { id: conv.id });
    } catch { /* ticks stay at "sent" */ }
  }

  /** "pending" | "failed" | "sent" | "delivered" | "read" of one of our messages. */
  tickOf(conv, message) {
    if (message.status === "pending" || message.status === "failed") return message.status;
    const others = conv.members.filter((m) => m.user_id !== this.me.user_id);
    if (!others.length) return "read";
    const marks = others.map((m) => conv.marks.get(m.user_id) || { d: 0, r: 0 });
    if (marks.every((mark) => mark.r >= message.seq)) return "read";
    if (marks.every((mark) => Math.max(mark.d, mark.r) >= message.seq)) return "delivered";
    return "sent";
  }

  // -- storing messages ----------------------------------------------------------------

  #store(conv, message, live) {
    const seq = message.seq;
    const had = conv.msgs.get(seq);
    if (had && had.hidden) return;
    if (had && live && had.content_type === message.content_type) return; // a repeat
    conv.msgs.set(seq, message);
    conv.pending = conv.pending.filter((p) => p.client_msg_id !== message.client_msg_id
                                        || message.sender_id !== this.me.user_id);
    if (seq > (conv.last_seq || 0)) {
      conv.last_seq = seq;
      conv.last_activity = Math.max(conv.last_activity || 0, message.ts);
    }
    if (live) this.#applyModifier(conv, message);
  }

  #applyModifier(conv, message) {
    const body = message.body;
    if (message.content_type === "chatd/edit" && body && conv.msgs.has(body.target)) {
      const target = conv.msgs.get(body.target);
      conv.msgs.set(body.target, { ...target, body: body.body, edited_at: message.ts });
    } else if (message.content_type === "chatd/reaction" && body && conv.msgs.has(body.target)) {
      // Reactions are counted by the server: read the message as it is now.
      this.api.get(`/messages/${conv.id}?after=${body.target - 1}&limit=1`).then((page) => {
        const fresh = page.messages.find((m) => m.seq === body.target);
        if (fresh) conv.msgs.set(fresh.seq, fresh);
        this.emit("messages", { id: conv.id });
      }).catch(() => {});
    }
  }

  // -- the live stream -----------------------------------------------------------------

  #onLiveState(state, detail) {
    this.connection = state;
    this.emit("connection", detail);
    if (state === "open") {
      // Catch up: the server streams what this device did not acknowledge; the list and
      // the open conversation are read again for what changed meanwhile.
      this.refreshConversations().then(() => {
        for (const conv of this.convs.values()) {
          if (conv.loaded && conv.last_seq > conv.newest) this.fillGap(conv);
        }
      }).catch(() => {});
      this.#flushPending();
    }
  }

  #onFrame(frame) {
    switch (frame.type) {
      case "message": this.#onMessage(frame.message); break;
      case "receipt": this.#onReceipt(frame); break;
      case "presence":
        this.presence.set(frame.user_id, { online: frame.online, last_seen: frame.last_seen });
        this.emit("conv");
        break;
      case "typing": this.#onTyping(frame); break;
      case "profile":
        this.users.set(frame.user.user_id, { ...this.users.get(frame.user.user_id), ...frame.user });
        if (this.me && frame.user.user_id === this.me.user_id) Object.assign(this.me, frame.user);
        this.emit("users");
        break;
      case "invite": this.refreshInvites().catch(() => {}); break;
      case "message_deleted": {
        const conv = this.conversation(frame.conversation_id);
        const old = conv && conv.msgs.get(frame.seq);
        if (old) {
          conv.msgs.set(frame.seq, {
            ...old, content_type: "chatd/deleted", body: "", attachments: undefined,
          });
          this.emit("messages", { id: conv.id });
        }
        break;
      }
      case "message_hidden": {
        const conv = this.conversation(frame.conversation_id);
        const old = conv && conv.msgs.get(frame.seq);
        if (old) {
          conv.msgs.set(frame.seq, { ...old, hidden: true });
          this.emit("messages", { id: conv.id });
        }
        break;
      }
      case "error":
        if (!frame.req) this.emit("error", { message: frame.message, code: frame.code });
        break;
      default: break;
    }
  }

  async #onMessage(message) {
    let conv = this.conversation(message.conversation_id);
    if (!conv) {
      try {
        const data = await this.api.get(`/conversations/${message.conversation_id}`);
        conv = this.#upsert(data.request === "received" ? this.requests : this.convs, data);
        for (const member of conv.members) this.user(member.user_id);
      } catch {
        return;
      }
    }
    const fresh = !conv.msgs.has(message.seq);
    this.#store(conv, message, true);
    this.#queueAck(conv.id, message.seq);
    const mine = message.sender_id === this.me.user_id;
    if (fresh && !mine && isShown(message)) {
      conv.typing.delete(message.sender_id);
      if (this.currentId === conv.id && this.visible) this.markRead(conv);
      else {
        conv.unread = (conv.unread || 0) + 1;
        this.emit("notify", { conv, message });
      }
    }
    if (message.content_type === "chatd/system") {
      this.#refreshConversation(conv.id);
    } else if (conv.request === "sent" && !mine) {
      // An answer accepts our request: receipts and presence may be shown from now on.
      this.#refreshConversation(conv.id).then(() => {
        if (conv.request !== "sent" && this.live) this.live.restart();
        this.#loadMarks(conv);
        const peer = this.peerOf(conv);
        if (peer) this.#refreshPeer(peer);
      });
    }
    if (conv.loaded && message.seq > conv.newest + 1) this.fillGap(conv);
    this.#advanceNewest(conv);
    this.emit("messages", { id: conv.id, live: true });
    this.emit("list");
  }

  async #refreshConversation(id) {
    try {
      const data = await this.api.get(`/conversations/${id}`);
      const map = data.request === "received" ? this.requests : this.convs;
      this.#upsert(map, data);
      (map === this.convs ? this.requests : this.convs).delete(id);
      for (const member of data.members) this.user(member.user_id);
      this.emit("list");
      this.emit("conv");
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        this.convs.delete(id);
        this.requests.delete(id);
        if (this.currentId === id) this.currentId = null;
        this.emit("open");
        this.emit("list");
      }
    }
  }

  #onReceipt(frame) {
    const conv = this.conversation(frame.conversation_id);
    if (!conv) return;
    const mark = conv.marks.get(frame.user_id) || { d: 0, r: 0 };
    mark.d = Math.max(mark.d, frame.delivered_seq || 0);
    if (frame.read_seq !== undefined && frame.read_seq !== null) {
      mark.r = Math.max(mark.r, frame.read_seq);
    }
    conv.marks.set(frame.user_id, mark);
    this.emit("messages", { id: conv.id });
  }

  #onTyping(frame) {
    const conv = this.conversation(frame.conversation_id);
    if (!conv || frame.user_id === this.me.user_id) return;
    conv.typing.set(frame.user_id, Date.now() + TYPING_SHOWN_MS);
    this.emit("typing", { id: conv.id });
    setTimeout(() => this.emit("typing", { id: conv.id }), TYPING_SHOWN_MS + 50);
  }

  typersOf(conv) {
    const now = Date.now();
    return Array.from(conv.typing.entries()).filter(([, until]) => until > now).map(([id]) => id);
  }

  #queueAck(convId, seq) {
    this.acks.set(convId, Math.max(this.acks.get(convId) || 0, seq));
    if (this.ackScheduled) return;
    this.ackScheduled = true;
    queueMicrotask(() => {
      this.ackScheduled = false;
      for (const [id, top] of this.acks) {
        this.live.sendRaw({ type: "ack", conversation_id: id, seq: top });
      }
      this.acks.clear();
    });
  }

  // -- actions -------------------------------------------------------------------------

  markRead(conv) {
    conv.unread = 0;
    const top = conv.last_seq || 0;
    const already = conv.receipts ? conv.receipts.read_seq : 0;
    if (top > 0 && top > already && this.visible && this.currentId === conv.id) {
      conv.receipts = { ...(conv.receipts || {}), read_seq: top, delivered_seq: top };
      if (!this.live || !this.live.sendRaw({ type: "read", conversation_id: conv.id, seq: top })) {
        this.api.post(`/conversations/${conv.id}/read`, { seq: top }).catch(() => {
          conv.receipts.read_seq = already;
        });
      }
    }
    this.emit("list");
  }

  typing(conv) {
    if (conv.encrypted || !this.live) return;
    const last = this.lastTypingSent.get(conv.id) || 0;
    if (Date.now() - last < TYPING_EVERY_MS) return;
    this.lastTypingSent.set(conv.id, Date.now());
    this.live.sendRaw({ type: "typing", conversation_id: conv.id });
  }

  /** Send a text (with uploaded attachments): shown at once as pending. */
  send(conv, text, uploads = [], replyTo = null) {
    if (conv.encrypted) {
      // Browser E2E is out of scope: never send plaintext into an encrypted conversation.
      throw new Error("This conversation is end-to-end encrypted; the web app cannot send into it.");
    }
    const pending = {
      client_msg_id: newClientMsgId(), conversation_id: conv.id, sender_id: this.me.user_id,
      content_type: "text/plain", body: text, ts: Date.now(), status: "pending",
      attachments: uploads.length ? uploads.map(attachmentOf) : undefined,
    };
    if (replyTo) {
      pending.reply_to = replyTo.seq;
      pending.quote = { sender_id: replyTo.sender_id, content_type: replyTo.content_type,
                        text: typeof replyTo.body === "string" ? replyTo.body.slice(0, 100) : "" };
    }
    conv.pending.push(pending);
    conv.last_activity = pending.ts;
    this.emit("messages", { id: conv.id, live: true, own: true });
    this.emit("list");
    this.#trySend(conv, pending);
  }

  retry(conv, pending) {
    pending.status = "pending";
    pending.error = null;
    this.emit("messages", { id: conv.id });
    this.#trySend(conv, pending);
  }

  discard(conv, pending) {
    conv.pending = conv.pending.filter((p) => p !== pending);
    this.emit("messages", { id: conv.id });
  }

  #flushPending() {
    for (const conv of [...this.convs.values(), ...this.requests.values()]) {
      for (const p of conv.pending) if (p.status === "pending" && !p.inflight) this.#trySend(conv, p);
    }
  }

  async #trySend(conv, pending) {
    if (!this.live || !this.live.open || pending.inflight) return; // sent when connected
    pending.inflight = true;
    const frame = {
      type: "send", conversation_id: conv.id, client_msg_id: pending.client_msg_id,
      content_type: pending.content_type, body: pending.body,
    };
    if (pending.reply_to) frame.reply_to = pending.reply_to;
    if (pending.attachments) frame.attachments = pending.attachments.map((a) => ({ media_id: a.media_id }));
    const answer = await this.live.request(frame);
    pending.inflight = false;
    if (answer.type === "sent") {
      const { status: _s, error: _e, inflight: _i, ...message } = pending;
      this.#store(conv, {
        ...message, message_id: answer.message_id, seq: answer.seq, ts: answer.ts,
      }, false);
      this.#queueAck(conv.id, answer.seq);
      this.#advanceNewest(conv);
      if (conv.request === "received") {
        this.#refreshConversation(conv.id).then(() => {
          if (conv.request !== "received" && this.live) this.live.restart();
        });
      }
    } else if (answer.code === "disconnected") {
      return; // stays pending; sent again (same client_msg_id) once reconnected
    } else if (answer.code === "rate_limited") {
      const wait = Math.max(1, answer.retry_after || 1);
      this.emit("error", { code: "rate_limited",
                           message: `Rate limited: sending again in ${wait} s.` });
      setTimeout(() => this.#trySend(conv, pending), wait * 1000);
    } else {
      pending.status = "failed";
      pending.error = answer.message || answer.code;
      this.emit("error", { code: answer.code, message: `Not sent: ${pending.error}` });
    }
    this.emit("messages", { id: conv.id });
    this.emit("list");
  }

  async startDirect(handle) {
    const profile = await this.api.get(`/users?handle=${encodeURIComponent(handle.trim().replace(/^@/, ""))}`);
    this.users.set(profile.user_id, profile);
    const data = await this.api.post("/conversations/direct", { user_id: profile.user_id });
    const conv = this.#upsert(this.convs, data);
    this.emit("list");
    return conv;
  }

  async resolveHandles(text) {
    const handles = text.split(/[\s,]+/).map((s) => s.trim().replace(/^@/, "")).filter(Boolean);
    const ids = [];
    for (const handle of handles) {
      const profile = await this.api.get(`/users?handle=${encodeURIComponent(handle)}`);
      this.users.set(profile.user_id, profile);
      ids.push(profile.user_id);
    }
    return ids;
  }

  async createGroup(name, handlesText) {
    const members = await this.resolveHandles(handlesText);
    const data = await this.api.post("/groups/create", { name, members });
    const conv = this.#upsert(this.convs, data);
    this.emit("list");
    return conv;
  }

  async groupAction(conv, action, body = undefined) {
    const data = await this.api.post(`/groups/${conv.id}/${action}`, body);
    if (action === "leave") {
      this.convs.delete(conv.id);
      if (this.currentId === conv.id) this.currentId = null;
      this.emit("open");
    } else if (data) {
      this.#upsert(this.convs, data);
    }
    this.emit("list");
    this.emit("conv");
  }

  async renameGroup(conv, name) {
    this.#upsert(this.convs, await this.api.patch(`/groups/${conv.id}`, { name }));
    this.emit("list");
    this.emit("conv");
  }

  async setTimer(conv, seconds) {
    this.#upsert(this.convs.has(conv.id) ? this.convs : this.requests,
                 await this.api.patch(`/conversations/${conv.id}`, { disappearing_s: seconds }));
    this.emit("conv");
  }

  async answerRequest(conv, accept) {
    const data = await this.api.post(`/conversations/${conv.id}/${accept ? "accept" : "decline"}`);
    if (accept) this.#upsert(this.convs, data);
    this.requests.delete(conv.id);
    // The server settles whose presence a connection sees when it opens: a new contact's
    // shows after a reconnect (catch-up makes it lossless).
    if (accept && this.live) this.live.restart();
    else if (this.currentId === conv.id) this.currentId = null;
    this.emit("open");
    this.emit("list");
  }

  async answerInvite(invite, accept) {
    const data = await this.api.post(
      `/groups/${invite.conversation_id}/invite/${accept ? "accept" : "decline"}`);
    this.invites = this.invites.filter((i) => i !== invite);
    if (accept && data) this.#upsert(this.convs, data);
    this.emit("list");
  }

  async block(userId, blocked) {
    if (blocked) await this.api.post(`/blocks/${userId}`);
    else await this.api.del(`/blocks/${userId}`);
    if (blocked) this.blocks.add(userId); else this.blocks.delete(userId);
    await this.refreshConversations();
    this.emit("conv");
  }

  async deleteMessage(conv, message, forEveryone) {
    await this.api.post(`/messages/${conv.id}/${message.seq}/delete`,
                        { for: forEveryone ? "everyone" : "me" });
    const old = conv.msgs.get(message.seq);
    if (old) {
      conv.msgs.set(message.seq, forEveryone
        ? { ...old, content_type: "chatd/deleted", body: "", attachments: undefined }
        : { ...old, hidden: true });
    }
    this.emit("messages", { id: conv.id });
    this.emit("list");
  }

  async report(conv, { seq, userId, reason, note, evidence }) {
    const body = { conversation_id: conv.id, reason };
    if (seq) body.seq = seq;
    if (userId) body.user_id = userId;
    if (note) body.note = note;
    if (evidence) body.evidence = evidence;
    return this.api.post("/reports", body);
  }
}
