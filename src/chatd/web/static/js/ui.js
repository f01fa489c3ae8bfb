// The main screen: the conversation list and the chat pane, drawn from ChatClient's
// state. Everything users wrote is put into the page as text (dom.js).
import { describe } from "./api.js";
import { isShown } from "./client.js";
import {
  conversationDialog, messageDialog, newChatDialog, newGroupDialog, settingsDialog,
} from "./dialogs.js";
import { h, replace } from "./dom.js";
import {
  clock, dayKey, dayLabel, hueOf, initials, lastSeen, linkify, listTime, timerLabel,
} from "./format.js";
import { icon } from "./icons.js";
import { attachmentView } from "./media.js";
import { notifyMessage } from "./notify.js";

/** How near the top of the log (px) scrolling fetches the page before. */
const NEAR_TOP = 120;
const HIDDEN_SYSTEM = new Set(["message_deleted"]);
const TICKS = {
  pending: ["🕓", "Pending"], failed: ["!", "Not sent"], sent: ["✓", "Sent"],
  delivered: ["✓✓", "Delivered"], read: ["✓✓", "Read"],
};

function avatar(name, id, extra = "") {
  const el = h("span", { class: `avatar ${extra}`, aria: { hidden: "true" } }, initials(name));
  el.style.setProperty("--hue", String(hueOf(id)));
  return el;
}

export class MainView {
  constructor(client, { onLogout }) {
    this.client = client;
    this.onLogout = onLogout;
    this.scheduled = new Set();
    this.replyTo = null;
    this.uploads = [];
    this.filter = "";
    this.build();
    client.addEventListener("change", (event) => this.onChange(event.detail));
    window.addEventListener("hashchange", () => this.route());
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !document.querySelector("dialog[open]")) this.escape();
    });
  }

  // -- layout --------------------------------------------------------------------------

  build() {
    const c = this.client;
    this.banner = h("div", { class: "banner", role: "status", aria: { live: "polite" }, hidden: true });
    this.toasts = h("div", { class: "toasts", role: "alert", aria: { live: "assertive" } });
    this.meAvatar = h("span", {});
    this.search = h("input", { type: "search", class: "search", placeholder: "Search chats",
                               aria: { label: "Search chats" } });
    this.search.addEventListener("input", () => { this.filter = this.search.value.trim().toLowerCase(); this.renderList(); });
    this.list = h("ul", { class: "conv-list", aria: { label: "Chats" } });
    this.requestList = h("div", { class: "requests" });
    const sideHead = h("header", { class: "side-head" },
      this.meAvatar,
      h("h1", { class: "side-title" }, "Chats"),
      h("div", { class: "head-actions" },
        h("button", { type: "button", class: "icon-button", aria: { label: "New chat" }, title: "New chat",
                      onclick: () => newChatDialog(c, (id) => this.go(id)) }, icon("edit")),
        h("button", { type: "button", class: "icon-button", aria: { label: "New group" }, title: "New group",
                      onclick: () => newGroupDialog(c, (id) => this.go(id)) }, icon("group")),
        h("button", { type: "button", class: "icon-button", aria: { label: "Settings" }, title: "Settings",
                      onclick: () => settingsDialog(c, { onLogout: this.onLogout }) }, icon("settings"))));
    this.sidebar = h("aside", { class: "sidebar", aria: { label: "Conversations" } },
      sideHead, h("div", { class: "search-wrap" }, this.search), this.requestList,
      h("nav", { class: "list-scroll", aria: { label: "Chat list" } }, this.list));

    this.pane = h("main", { class: "pane", aria: { label: "Chat" } });
    this.root = h("div", { class: "app", data: { view: "list" } }, this.banner, this.sidebar, this.pane, this.toasts);
    this.buildPane();
    return this.root;
  }

  buildPane() {
    const c = this.client;
    this.headAvatar = h("span", {});
    this.title = h("h2", { class: "chat-title" });
    this.subtitle = h("p", { class: "chat-sub", aria: { live: "polite" } });
    this.infoButton = h("button", { type: "button", class: "chat-head-main", aria: { label: "Chat info" } },
      this.headAvatar, h("span", { class: "chat-head-text" }, this.title, this.subtitle));
    this.infoButton.addEventListener("click", () => { if (c.current) conversationDialog(c, c.current); });
    const back = h("button", { type: "button", class: "icon-button back", aria: { label: "Back to chats" },
                               onclick: () => this.go(null) }, icon("back"));
    this.head = h("header", { class: "chat-head" }, back, this.infoButton);
    this.timeline = h("ol", { class: "timeline" });
    this.scroller = h("div", { class: "messages", role: "log", aria: { label: "Messages" }, tabindex: "0" },
      h("p", { class: "older-hint", hidden: true }), this.timeline);
    this.scroller.addEventListener("scroll", () => this.onScroll(), { passive: true });
    this.notices = h("div", { class: "notices" });

    this.input = h("textarea", { rows: 1, class: "composer-input", placeholder: "Type a message",
                                 aria: { label: "Message" }, maxlength: 65536 });
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submit();
      }
    });
    this.input.addEventListener("input", () => {
      this.autosize();
      if (c.current && this.input.value) c.typing(c.current);
    });
    this.input.addEventListener("paste", (event) => {
      const files = Array.from(event.clipboardData ? event.clipboardData.files : []);
      if (files.length) { event.preventDefault(); this.uploadFiles(files); }
    });
    this.fileInput = h("input", { type: "file", multiple: true, class: "visually-hidden", tabindex: "-1",
                                  aria: { label: "Choose files" } });
    this.fileInput.addEventListener("change", () => {
      this.uploadFiles(Array.from(this.fileInput.files));
      this.fileInput.value = "";
    });
    this.attach = h("button", { type: "button", class: "icon-button", aria: { label: "Attach a file" }, title: "Attach",
                                onclick: () => this.fileInput.click() }, icon("attach"));
    this.sendButton = h("button", { type: "submit", class: "send", aria: { label: "Send" } }, icon("send"));
    this.replyBox = h("div", { class: "reply-box", hidden: true });
    this.progress = h("div", { class: "uploads" });
    this.composerNote = h("p", { class: "composer-note", hidden: true });
    this.composer = h("form", { class: "composer", aria: { label: "Write a message" } },
      this.replyBox, this.progress,
      h("div", { class: "composer-row" }, this.attach, this.fileInput, this.input, this.sendButton),
      this.composerNote);
    this.composer.addEventListener("submit", (event) => { event.preventDefault(); this.submit(); });
    this.chat = h("section", { class: "chat", aria: { label: "Conversation" }, hidden: true },
      this.head, this.scroller, this.notices, this.composer);
    this.empty = h("div", { class: "empty" },
      h("div", { class: "empty-mark", aria: { hidden: "true" } }),
      h("h2", {}, "chatd for the web"),
      h("p", {}, "Pick a chat on the left, or start a new one."));
    this.dropHint = h("div", { class: "drop-hint", hidden: true }, "Drop files to send them");
    this.chat.append(this.dropHint);
    this.chat.addEventListener("dragover", (event) => {
      if (!event.dataTransfer || !Array.from(event.dataTransfer.types).includes("Files")) return;
      event.preventDefault();
      this.dropHint.hidden = false;
    });
    this.chat.addEventListener("dragleave", (event) => {
      if (event.target === this.dropHint) this.dropHint.hidden = true;
    });
    this.chat.addEventListener("drop", (event) => {
      event.preventDefault();
      this.dropHint.hidden = true;
      const files = Array.from(event.dataTransfer ? event.dataTransfer.files : []);
      if (files.length) this.uploadFiles(files);
    });
    replace(this.pane, this.empty, this.chat);
  }

  // -- events --------------------------------------------------------------------------

  onChange(detail) {
    const { what } = detail;
    if (what === "list" || what === "users") this.schedule("list");
    if (what === "open") { this.schedule("pane"); this.schedule("list"); }
    if (what === "conv" || what === "users" || what === "typing") this.schedule("head");
    if (what === "users" || what === "conv") this.schedule("messages");
    if (what === "messages") this.schedule("list");
    if (what === "messages" && detail.id === this.client.currentId) {
      if (detail.own) this.stickToBottom = true;
      this.schedule("messages");
      this.schedule("head");
    }
    if (what === "connection") this.renderConnection();
    if (what === "error") this.toast(detail.message);
    if (what === "notify") {
      const { conv, message } = detail;
      notifyMessage(this.client.titleOf(conv), this.previewOf(conv, message), () => this.go(conv.id));
    }
  }

  schedule(part) {
    if (this.scheduled.size === 0) requestAnimationFrame(() => this.flush());
    this.scheduled.add(part);
  }

  flush() {
    const parts = new Set(this.scheduled);
    this.scheduled.clear();
    if (parts.has("list")) this.renderList();
    if (parts.has("pane")) this.renderPane();
    else {
      if (parts.has("head")) this.renderHead();
      if (parts.has("messages")) this.renderMessages();
    }
  }

  route() {
    const match = /^#\/c\/(\d{1,19})$/.exec(location.hash);
    const id = match ? match[1] : null;
    if (id === this.client.currentId) return;
    this.replyTo = null;
    if (id) this.client.open(id).catch((failure) => this.toast(describe(failure)));
    else this.client.close();
  }

  go(id) {
    const hash = id ? `#/c/${id}` : "#/";
    if (location.hash !== hash) location.hash = hash;
    else this.route();
  }

  escape() {
    if (this.replyTo) { this.setReply(null); return; }
    if (this.client.currentId) this.go(null);
  }

  toast(message) {
    if (!message) return;
    const item = h("p", { class: "toast" }, message);
    this.toasts.append(item);
    setTimeout(() => item.remove(), 6000);
  }

  renderConnection() {
    const state = this.client.connection;
    const live = this.client.live;
    clearInterval(this.countdown);
    if (state === "open") { this.banner.hidden = true; return; }
    const retry = h("button", { type: "button", class: "link", onclick: () => live && live.reconnectNow() }, "Retry now");
    const draw = () => {
      if (state === "offline") replace(this.banner, "You are offline. Messages will be sent when the network is back. ", retry);
      else if (state === "waiting") {
        const seconds = Math.max(0, Math.ceil(((live && live.retryAt) - Date.now()) / 1000));
        replace(this.banner, `Connection lost. Reconnecting in ${seconds} s… `, retry);
      } else if (state === "reconnecting") replace(this.banner, "Reconnecting…");
      else if (state === "connecting") replace(this.banner, "Connecting…");
      else if (state === "unauthorized") replace(this.banner, "Signed out.");
    };
    draw();
    if (state === "waiting") this.countdown = setInterval(draw, 1000);
    this.banner.hidden = false;
  }

  // -- the list ------------------------------------------------------------------------

  previewOf(conv, message) {
    if (!message) return conv.kind === "group" ? "Group created" : "No messages yet";
    const mine = message.sender_id === this.client.me.user_id;
    const who = conv.kind === "group" && message.content_type !== "chatd/system"
      ? `${mine ? "You" : this.client.nameOf(message.sender_id)}: ` : "";
    return who + this.textOf(conv, message);
  }

  textOf(conv, message) {
    if (message.content_type === "chatd/system") return this.systemText(message);
    if (message.content_type === "chatd/deleted") return "This message was deleted";
    if (conv.encrypted || !message.content_type.startsWith("text/")) return "Encrypted message";
    if (message.body) return message.body;
    const first = message.attachments && message.attachments[0];
    if (!first) return "";
    return { image: "Photo", video: "Video", audio: "Audio" }[first.kind] || first.filename || "File";
  }

  systemText(message) {
    const c = this.client;
    const b = message.body || {};
    const actor = c.nameOf(b.actor_id || message.sender_id);
    const names = (b.user_ids || []).map((id) => c.nameOf(id)).join(", ");
    switch (b.event) {
      case "group_created": return `${actor} created the group “${b.name || ""}”`;
      case "members_added": return `${actor} added ${names}`;
      case "members_removed": return `${actor} removed ${names}`;
      case "admins_added": {
        const ids = b.user_ids || [];
        const plural = ids.length > 1 || (ids.length === 1 && ids[0] === c.me.user_id);
        return `${names} ${plural ? "are" : "is"} now admin`;
      }
      case "member_left": return `${actor} left`;
      case "renamed": return `${actor} renamed the group to “${b.name || ""}”`;
      case "photo_changed": return b.media_id ? `${actor} changed the group photo` : `${actor} removed the group photo`;
      case "invite_accepted": return `${actor} joined by invitation`;
      case "disappearing_set": return b.disappearing_s
        ? `${actor} set disappearing messages to ${timerLabel(b.disappearing_s)}` : `${actor} turned off disappearing messages`;
      case "timer_permission_set": return b.anyone_sets_timer
        ? `${actor} let every member change the timer` : `${actor} let only admins change the timer`;
      case "member_erased": return "A member deleted their account";
      case "message_deleted": return `${actor} deleted a message`;
      default: return "Conversation updated";
    }
  }

  convRow(conv, { request = false } = {}) {
    const c = this.client;
    const title = c.titleOf(conv);
    const last = conv.lastShown;
    const time = last ? listTime(last.ts) : listTime(conv.last_activity);
    const unread = conv.unread || 0;
    const preview = h("span", { class: "conv-preview" },
      conv.encrypted ? icon("lock", "inline") : null,
      // Ticks in the list once the watermarks are known (on opening the chat, or live).
      last && last.sender_id === c.me.user_id && last.content_type !== "chatd/system"
        && (conv.marks.size || !last.seq) ? this.tick(conv, last) : null,
      this.previewOf(conv, last));
    const button = h("button", { type: "button", class: "conv", aria: { current: conv.id === c.currentId ? "true" : null },
                                 onclick: () => this.go(conv.id) },
      avatar(title, conv.id, conv.kind === "group" ? "group" : ""),
      h("span", { class: "conv-main" },
        h("span", { class: "conv-top" }, h("span", { class: "conv-name" }, title), h("span", { class: "conv-time" }, time)),
        h("span", { class: "conv-bottom" }, preview,
          unread ? h("span", { class: "unread", aria: { label: `${unread} unread` } }, String(unread)) : null,
          request ? h("span", { class: "badge" }, "request") : null)));
    button.setAttribute("aria-label", `${title}${unread ? `, ${unread} unread` : ""}`);
    return h("li", {}, button);
  }

  renderList() {
    const c = this.client;
    if (!c.me) return;
    replace(this.meAvatar, avatar(c.me.display_name, c.me.user_id, "me"));
    const match = (conv) => !this.filter || c.titleOf(conv).toLowerCase().includes(this.filter);
    const convs = Array.from(c.convs.values()).filter(match)
      .sort((a, b) => (b.last_activity || 0) - (a.last_activity || 0));
    replace(this.list, convs.length ? convs.map((conv) => this.convRow(conv))
      : h("li", { class: "list-empty" }, this.filter ? "No chat matches." : "No chats yet. Start one with the pencil above."));
    const requests = Array.from(c.requests.values()).filter(match);
    const invites = c.invites;
    if (!requests.length && !invites.length) { replace(this.requestList); return; }
    replace(this.requestList,
      h("h2", { class: "section-title" }, `Message requests (${requests.length + invites.length})`),
      h("ul", { class: "conv-list", aria: { label: "Message requests" } },
        requests.map((conv) => this.convRow(conv, { request: true })),
        invites.map((invite) => {
          const accept = h("button", { type: "button", class: "small primary" }, "Join");
          const decline = h("button", { type: "button", class: "small" }, "Decline");
          accept.addEventListener("click", () => c.answerInvite(invite, true).catch((f) => this.toast(describe(f))));
          decline.addEventListener("click", () => c.answerInvite(invite, false).catch((f) => this.toast(describe(f))));
          return h("li", { class: "invite" },
            h("span", {}, `${c.nameOf(invite.invited_by)} invited you to “${invite.name}”`), accept, decline);
        })));
  }

  // -- the chat pane -------------------------------------------------------------------

  renderPane() {
    const conv = this.client.current;
    this.root.dataset.view = conv ? "chat" : "list";
    this.empty.hidden = Boolean(conv);
    this.chat.hidden = !conv;
    if (!conv) return;
    this.shownId = conv.id;
    this.stickToBottom = true;
    this.setReply(null);
    this.renderHead();
    this.renderMessages();
    if (window.matchMedia("(min-width: 760px)").matches) this.input.focus();
  }

  renderHead() {
    const c = this.client;
    const conv = c.current;
    if (!conv) return;
    const title = c.titleOf(conv);
    document.title = `${title} · chatd`;
    replace(this.headAvatar, avatar(title, conv.id, conv.kind === "group" ? "group" : ""));
    this.title.textContent = title;
    const typers = c.typersOf(conv);
    let sub;
    if (typers.length) {
      sub = conv.kind === "group" ? `${typers.map((id) => c.nameOf(id)).join(", ")} typing…` : "typing…";
    } else if (conv.kind === "group") {
      sub = conv.members.map((m) => c.nameOf(m.user_id)).join(", ");
    } else {
      const peer = c.peerOf(conv);
      const presence = c.presence.get(peer);
      sub = peer === c.me.user_id ? "Message yourself"
        : presence && presence.online ? "online" : presence ? lastSeen(presence.last_seen) : "";
    }
    this.subtitle.textContent = sub;
    this.subtitle.classList.toggle("typing", typers.length > 0);
    this.renderNotices(conv);
  }

  renderNotices(conv) {
    const c = this.client;
    const notes = [];
    let disabled = "";
    if (conv.encrypted) {
      notes.push(h("p", { class: "notice" }, icon("lock", "inline"), "This conversation is end-to-end encrypted. The web app cannot read or send its messages: use the chatd app."));
      disabled = "Encrypted conversation: sending from the web app is not possible.";
    }
    if (conv.request === "received") {
      const who = c.titleOf(conv);
      const peer = c.peerOf(conv);
      const accept = h("button", { type: "button", class: "primary" }, "Accept");
      const decline = h("button", { type: "button" }, "Decline");
      const block = h("button", { type: "button", class: "danger" }, "Block");
      accept.addEventListener("click", () => c.answerRequest(conv, true).catch((f) => this.toast(describe(f))));
      decline.addEventListener("click", () => c.answerRequest(conv, false).then(() => this.go(null)).catch((f) => this.toast(describe(f))));
      block.addEventListener("click", () => c.block(peer, true).then(() => this.go(null)).catch((f) => this.toast(describe(f))));
      notes.push(h("div", { class: "notice request", role: "group", aria: { label: "Message request" } },
        h("p", {}, `${who} is not in your contacts and wants to message you. They won't see that you read this, or your presence, until you accept.`),
        h("div", { class: "actions" }, block, decline, accept)));
    } else if (conv.request === "sent") {
      notes.push(h("p", { class: "notice muted" }, "Message request sent. They see your messages once they accept."));
    }
    if (conv.blocked) {
      const unblock = h("button", { type: "button", class: "link" }, "Unblock");
      unblock.addEventListener("click", () => c.block(c.peerOf(conv), false).catch((f) => this.toast(describe(f))));
      notes.push(h("p", { class: "notice" }, "You blocked this contact. ", unblock));
      disabled = disabled || "You blocked this contact.";
    }
    if (conv.disappearing_s) {
      notes.push(h("p", { class: "notice muted small-text" }, icon("timer", "inline"), `Disappearing messages: ${timerLabel(conv.disappearing_s)}`));
    }
    replace(this.notices, notes);
    const off = Boolean(disabled);
    this.input.disabled = off;
    this.sendButton.disabled = off;
    this.attach.disabled = off;
    this.input.placeholder = off ? disabled : "Type a message";
    this.composerNote.hidden = !off;
    this.composerNote.textContent = disabled;
  }

  tick(conv, message) {
    const state = this.client.tickOf(conv, message);
    const [symbol, label] = TICKS[state];
    return h("span", { class: `tick ${state}`, role: "img", aria: { label }, title: message.error || label },
      state === "pending" ? icon("clock") : symbol);
  }

  atBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 40;
  }

  renderMessages() {
    const c = this.client;
    const conv = c.current;
    if (!conv) return;
    const stick = this.stickToBottom || this.atBottom();
    this.stickToBottom = false;
    const fromBottom = this.scroller.scrollHeight - this.scroller.scrollTop;
    const items = [];
    let lastDay = null;
    let lastSender = null;
    const entries = conv.sortedSeqs.map((seq) => conv.msgs.get(seq))
      .filter((m) => isShown(m) && !m.hidden
        && !(m.content_type === "chatd/system" && HIDDEN_SYSTEM.has(m.body && m.body.event)));
    const all = [...entries, ...conv.pending];
    const hint = this.scroller.firstChild;
    hint.hidden = !(conv.loaded && conv.hasMore) && !conv.loading;
    hint.textContent = conv.loading ? "Loading…" : "Scroll up for older messages";
    if (conv.loaded && !conv.hasMore && entries.length) {
      items.push(h("li", { class: "system start" }, h("span", {}, conv.kind === "group" ? "The beginning of this group's history" : "The beginning of your chat")));
    }
    for (const message of all) {
      const day = dayKey(message.ts);
      if (day !== lastDay) {
        items.push(h("li", { class: "day", role: "separator", aria: { label: dayLabel(message.ts) } },
          h("span", {}, dayLabel(message.ts))));
        lastDay = day;
        lastSender = null;
      }
      if (message.content_type === "chatd/system") {
        items.push(h("li", { class: "system" }, h("span", {}, this.systemText(message))));
        lastSender = null;
        continue;
      }
      items.push(this.bubble(conv, message, lastSender !== message.sender_id));
      lastSender = message.sender_id;
    }
    if (!all.length && conv.loaded) {
      items.push(h("li", { class: "system" }, h("span", {}, conv.encrypted ? "No messages yet" : "No messages yet. Say hello!")));
    }
    replace(this.timeline, items);
    if (stick) this.scroller.scrollTop = this.scroller.scrollHeight;
    else this.scroller.scrollTop = this.scroller.scrollHeight - fromBottom;
    // A page that does not fill the pane (reactions and edits are not shown) cannot be
    // scrolled up, and one that added nothing visible (only hidden entries, or messages the
    // live catch-up had already brought) leaves the pane at the top, where scrolling to the
    // top again fires no scroll event: in both cases fetch the one before it now.
    if (conv.hasMore && !conv.loading && (this.scroller.scrollHeight <= this.scroller.clientHeight
                                          || this.scroller.scrollTop <= NEAR_TOP)) {
      this.client.loadOlder(conv).catch((f) => this.toast(describe(f)));
    }
  }

  bubble(conv, message, first) {
    const c = this.client;
    const mine = message.sender_id === c.me.user_id;
    const deleted = message.content_type === "chatd/deleted";
    const content = h("div", { class: "content" });
    if (conv.kind === "group" && !mine && first) {
      const name = c.nameOf(message.sender_id);
      const label = h("p", { class: "sender" }, name);
      label.style.setProperty("--hue", String(hueOf(message.sender_id)));
      content.append(label);
    }
    if (message.forwarded) content.append(h("p", { class: "forwarded" }, icon("forward", "inline"), "Forwarded"));
    if (message.quote) {
      const q = message.quote;
      content.append(h("blockquote", { class: "quote" },
        h("span", { class: "quote-name" }, c.nameOf(q.sender_id)),
        h("span", {}, q.deleted ? "This message was deleted" : q.text || (q.content_type.startsWith("text/") ? "" : "Encrypted message"))));
    }
    if (deleted) {
      content.append(h("p", { class: "text deleted" }, icon("block", "inline"), "This message was deleted"));
    } else if (conv.encrypted || !message.content_type.startsWith("text/")) {
      content.append(h("p", { class: "text encrypted" }, icon("lock", "inline"), "Encrypted message. This app cannot decrypt it."));
    } else {
      for (const attachment of message.attachments || []) {
        content.append(h("div", { class: "attachment" }, attachmentView(c.api, attachment)));
      }
      if (message.body) content.append(h("p", { class: "text" }, linkify(message.body)));
    }
    const meta = h("span", { class: "meta" },
      message.edited_at ? h("span", { class: "edited" }, "edited") : null,
      message.expires_at ? h("span", { role: "img", aria: { label: "Disappearing message" }, title: "Disappearing message" }, icon("timer")) : null,
      h("time", { datetime: new Date(message.ts).toISOString() }, clock(message.ts)),
      mine ? this.tick(conv, message) : null);
    content.append(meta);
    if (message.reactions) {
      content.append(h("p", { class: "reactions" }, Object.entries(message.reactions).map(([emoji, r]) =>
        h("span", { class: `reaction${r.me ? " me" : ""}`, aria: { label: `${emoji} ${r.count}` } }, `${emoji} ${r.count}`))));
    }
    const item = h("li", { class: `msg ${mine ? "out" : "in"}${first ? " first" : ""}`, data: { seq: message.seq || "" } });
    item.append(content);
    if (message.status === "failed") {
      const retry = h("button", { type: "button", class: "link" }, "Retry");
      retry.addEventListener("click", () => c.retry(conv, message));
      const discard = h("button", { type: "button", class: "link" }, "Discard");
      discard.addEventListener("click", () => c.discard(conv, message));
      item.append(h("p", { class: "failed-note" }, `Not sent: ${message.error || ""} `, retry, " ", discard));
    } else if (message.seq) {
      item.append(h("button", { type: "button", class: "msg-menu", aria: { label: "Message actions" }, title: "More",
        onclick: () => messageDialog(c, conv, message, {
          onReply: deleted || conv.encrypted ? null : (m) => { this.setReply(m); this.input.focus(); },
        }) }, icon("more")));
    }
    return item;
  }

  setReply(message) {
    this.replyTo = message;
    if (!message) { this.replyBox.hidden = true; replace(this.replyBox); return; }
    const cancel = h("button", { type: "button", class: "icon-button", aria: { label: "Cancel reply" },
                                 onclick: () => this.setReply(null) }, icon("close"));
    replace(this.replyBox, h("div", { class: "quote" },
      h("span", { class: "quote-name" }, `Replying to ${this.client.nameOf(message.sender_id)}`),
      h("span", {}, typeof message.body === "string" ? message.body.slice(0, 100) : "")), cancel);
    this.replyBox.hidden = false;
  }

  onScroll() {
    const conv = this.client.current;
    if (!conv || this.scroller.scrollTop > NEAR_TOP || !conv.hasMore || conv.loading) return;
    this.client.loadOlder(conv).catch((f) => this.toast(describe(f)));
  }

  autosize() {
    this.input.style.height = "auto";
    this.input.style.height = `${Math.min(this.input.scrollHeight, 160)}px`;
  }

  submit() {
    const conv = this.client.current;
    if (!conv || this.input.disabled) return;
    const text = this.input.value.replace(/^\s+$/, "");
    if (!text.trim()) return;
    try {
      this.client.send(conv, text, [], this.replyTo);
    } catch (failure) {
      this.toast(failure.message);
      return;
    }
    this.input.value = "";
    this.autosize();
    this.setReply(null);
  }

  async uploadFiles(files) {
    const conv = this.client.current;
    if (!conv || conv.encrypted || conv.blocked) {
      if (conv && conv.encrypted) this.toast("Files cannot be sent into an encrypted conversation from the web app.");
      return;
    }
    const caption = this.input.value.trim();
    this.input.value = "";
    this.autosize();
    let first = true;
    for (const file of files) {
      const bar = h("progress", { max: "1", value: "0", aria: { label: `Uploading ${file.name}` } });
      const row = h("div", { class: "upload" }, h("span", { class: "upload-name" }, file.name), bar);
      this.progress.append(row);
      try {
        const upload = await this.client.api.upload(file, (fraction) => { bar.value = fraction; });
        this.client.send(conv, first ? caption : "", [upload], first ? this.replyTo : null);
        first = false;
        this.setReply(null);
      } catch (failure) {
        this.toast(`${file.name}: ${describe(failure)}`);
      } finally {
        row.remove();
      }
    }
  }
}
