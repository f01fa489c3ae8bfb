// Dialogs (<dialog>: focus is trapped, Esc closes): new chat, new group, conversation
// details, settings (profile, privacy, devices, notifications), report, message actions.
import { describe } from "./api.js";
import { h, replace, uid } from "./dom.js";
import { TIMER_CHOICES, lastSeen } from "./format.js";
import { icon } from "./icons.js";
import { enableNotifications, notificationState } from "./notify.js";

export function modal(title, build, { wide = false } = {}) {
  const titleId = uid("dlg");
  const error = h("p", { class: "form-error", role: "alert", hidden: true });
  const close = h("button", { type: "button", class: "icon-button", aria: { label: "Close" } }, icon("close"));
  const body = h("div", { class: "dialog-body" });
  const dialog = h("dialog", { class: wide ? "wide" : "", aria: { labelledby: titleId } },
    h("header", { class: "dialog-head" }, h("h2", { id: titleId }, title), close), body, error);
  const api = {
    dialog,
    close: () => dialog.close(),
    fail: (failure) => { error.textContent = describe(failure); error.hidden = false; },
    clearError: () => { error.hidden = true; },
    body,
  };
  close.addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => dialog.remove());
  replace(body, build(api));
  document.body.append(dialog);
  dialog.showModal();
  return api;
}

function labelled(label, input) {
  const id = uid("in");
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input);
}

async function busy(button, task, dlg) {
  button.disabled = true;
  dlg.clearError();
  try {
    await task();
  } catch (failure) {
    dlg.fail(failure);
  } finally {
    button.disabled = false;
  }
}

export function newChatDialog(client, onOpen) {
  modal("New chat", (dlg) => {
    const handle = h("input", { name: "handle", autocapitalize: "none", spellcheck: "false",
                                placeholder: "e.g. bob or +14155550123", required: true });
    const start = h("button", { type: "submit", class: "primary" }, "Start chat");
    const form = h("form", {}, labelled("Their username or phone", handle),
                   h("div", { class: "actions" }, start));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      busy(start, async () => {
        const conv = await client.startDirect(handle.value);
        dlg.close();
        onOpen(conv.id);
      }, dlg);
    });
    queueMicrotask(() => handle.focus());
    return form;
  });
}

export function newGroupDialog(client, onOpen) {
  modal("New group", (dlg) => {
    const name = h("input", { name: "name", maxlength: 64, required: true });
    const members = h("input", { name: "members", autocapitalize: "none", spellcheck: "false",
                                 placeholder: "bob, carol" });
    const create = h("button", { type: "submit", class: "primary" }, "Create group");
    const form = h("form", {}, labelled("Group name", name),
                   labelled("Members (usernames, separated by commas)", members),
                   h("div", { class: "actions" }, create));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      busy(create, async () => {
        const conv = await client.createGroup(name.value.trim(), members.value);
        dlg.close();
        onOpen(conv.id);
      }, dlg);
    });
    queueMicrotask(() => name.focus());
    return form;
  });
}

export function conversationDialog(client, conv) {
  modal(conv.kind === "group" ? "Group info" : "Contact info", (dlg) => {
    const content = h("div", { class: "stack" });
    const draw = () => {
      const fresh = client.conversation(conv.id);
      if (!fresh) { dlg.close(); return; }
      replace(content, conv.kind === "group" ? groupInfo(client, fresh, dlg) : directInfo(client, fresh, dlg));
    };
    const onChange = (event) => {
      if (!dlg.dialog.open) { client.removeEventListener("change", onChange); return; }
      if (["conv", "users", "list"].includes(event.detail.what)) draw();
    };
    client.addEventListener("change", onChange);
    draw();
    return content;
  }, { wide: true });
}

function timerControl(client, conv, dlg) {
  const select = h("select", { name: "timer" },
    TIMER_CHOICES.map(([s, label]) => h("option", { value: String(s), selected: s === (conv.disappearing_s || 0) }, label)));
  const canSet = conv.kind === "direct" || conv.anyone_sets_timer || client.isAdmin(conv);
  select.disabled = !canSet;
  select.addEventListener("change", () => {
    client.setTimer(conv, Number(select.value)).catch((failure) => dlg.fail(failure));
  });
  return labelled("Disappearing messages", select);
}

function directInfo(client, conv, dlg) {
  const peer = client.peerOf(conv);
  const profile = client.users.get(peer) || {};
  const presence = client.presence.get(peer);
  const blocked = client.blocks.has(peer);
  const self = peer === client.me.user_id;
  const blockButton = h("button", { type: "button", class: blocked ? "" : "danger" },
                        blocked ? `Unblock ${profile.display_name || ""}`.trim() : `Block ${profile.display_name || ""}`.trim());
  blockButton.addEventListener("click", () => busy(blockButton, () => client.block(peer, !blocked), dlg));
  const report = h("button", { type: "button", class: "danger" }, "Report contact");
  report.addEventListener("click", () => reportDialog(client, conv, { userId: peer }));
  return [
    h("div", { class: "profile-card" },
      h("p", { class: "profile-name" }, profile.display_name || "…"),
      h("p", { class: "muted" }, profile.handle ? `@${profile.handle}` : ""),
      profile.status ? h("p", {}, profile.status) : null,
      h("p", { class: "muted" }, presence && presence.online ? "online" : lastSeen(presence && presence.last_seen))),
    conv.encrypted ? h("p", { class: "notice" }, icon("lock", "inline"), "Messages here are end-to-end encrypted.") : null,
    timerControl(client, conv, dlg),
    self ? null : h("div", { class: "actions start" }, blockButton, report),
  ];
}

function groupInfo(client, conv, dlg) {
  const admin = client.isAdmin(conv);
  const name = h("input", { name: "group-name", value: conv.name || "", maxlength: 64, disabled: !admin });
  const rename = h("button", { type: "button", disabled: !admin }, "Rename");
  rename.addEventListener("click", () => busy(rename, () => client.renameGroup(conv, name.value.trim()), dlg));
  const members = h("ul", { class: "members", aria: { label: "Members" } },
    conv.members.map((member) => {
      const you = member.user_id === client.me.user_id;
      const who = client.nameOf(member.user_id);
      const row = h("li", {},
        h("span", { class: "member-name" }, you ? "You" : who),
        member.role === "admin" ? h("span", { class: "badge" }, "admin") : null);
      if (admin && !you) {
        if (member.role !== "admin") {
          const promote = h("button", { type: "button", class: "small", aria: { label: `Make ${who} admin` } }, "Make admin");
          promote.addEventListener("click", () => busy(promote,
            () => client.groupAction(conv, "admins", { user_ids: [member.user_id] }), dlg));
          row.append(promote);
        }
        const remove = h("button", { type: "button", class: "small danger", aria: { label: `Remove ${who}` } }, "Remove");
        remove.addEventListener("click", () => busy(remove,
          () => client.groupAction(conv, "remove", { user_ids: [member.user_id] }), dlg));
        row.append(remove);
      }
      return row;
    }));
  const addInput = h("input", { name: "add-members", autocapitalize: "none", spellcheck: "false", placeholder: "usernames" });
  const add = h("button", { type: "button" }, "Add");
  add.addEventListener("click", () => busy(add, async () => {
    const ids = await client.resolveHandles(addInput.value);
    if (ids.length) await client.groupAction(conv, "add", { user_ids: ids });
    addInput.value = "";
  }, dlg));
  const leave = h("button", { type: "button", class: "danger" }, "Leave group");
  leave.addEventListener("click", () => busy(leave, async () => {
    await client.groupAction(conv, "leave");
    dlg.close();
  }, dlg));
  return [
    h("div", { class: "row" }, labelled("Group name", name), rename),
    h("h3", {}, `${conv.members.length} members`),
    members,
    admin ? h("div", { class: "row" }, labelled("Add members", addInput), add) : null,
    timerControl(client, conv, dlg),
    h("div", { class: "actions start" }, leave),
  ];
}

export function reportDialog(client, conv, { seq = 0, userId = "", evidence = "" } = {}) {
  modal(seq ? "Report message" : "Report contact", (dlg) => {
    const reason = h("select", { name: "reason" },
      ["spam", "abuse", "harassment", "illegal", "other"].map((r) => h("option", { value: r }, r[0].toUpperCase() + r.slice(1))));
    const note = h("textarea", { name: "note", maxlength: 1000, rows: 3 });
    const send = h("button", { type: "submit", class: "primary danger" }, "Send report");
    const form = h("form", {}, labelled("Reason", reason), labelled("Note (needed for Other)", note),
                   h("div", { class: "actions" }, send));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      busy(send, async () => {
        await client.report(conv, { seq, userId, reason: reason.value, note: note.value.trim(), evidence });
        replace(dlg.body, h("p", { role: "status" }, "Thank you. The report was sent to the server's operators."));
      }, dlg);
    });
    return form;
  });
}

export function messageDialog(client, conv, message, { onReply } = {}) {
  modal("Message", (dlg) => {
    const mine = message.sender_id === client.me.user_id;
    const buttons = [];
    const act = (label, task, cls = "") => {
      const button = h("button", { type: "button", class: cls }, label);
      button.addEventListener("click", () => busy(button, async () => { await task(); dlg.close(); }, dlg));
      buttons.push(button);
    };
    if (message.content_type.startsWith("text/") && typeof message.body === "string") {
      act("Copy text", () => navigator.clipboard.writeText(message.body));
    }
    if (onReply) act("Reply", async () => onReply(message));
    act("Delete for me", () => client.deleteMessage(conv, message, false));
    if (message.content_type !== "chatd/deleted" && (mine || client.isAdmin(conv))) {
      act("Delete for everyone", () => client.deleteMessage(conv, message, true), "danger");
    }
    if (!mine && message.content_type !== "chatd/deleted") {
      const report = h("button", { type: "button", class: "danger" }, "Report");
      report.addEventListener("click", () => {
        dlg.close();
        reportDialog(client, conv, { seq: message.seq, evidence: typeof message.body === "string" ? message.body : "" });
      });
      buttons.push(report);
    }
    return h("div", { class: "menu-list" }, buttons);
  });
}

export function settingsDialog(client, { onLogout }) {
  modal("Settings", (dlg) => {
    const me = client.me;
    const name = h("input", { name: "display_name", value: me.display_name, maxlength: 64 });
    const status = h("input", { name: "status", value: me.status || "", maxlength: 140 });
    const save = h("button", { type: "button", class: "primary" }, "Save profile");
    save.addEventListener("click", () => busy(save, async () => {
      const updated = await client.api.patch("/me", { display_name: name.value.trim(), status: status.value.trim() });
      Object.assign(client.me, updated);
      client.emit("users");
      save.textContent = "Saved";
    }, dlg));

    const privacy = h("div", { class: "stack" }, h("p", { class: "muted" }, "Loading…"));
    client.api.get("/me/privacy").then((settings) => {
      const select = (key, label, choices) => {
        const el = h("select", { name: key }, choices.map(([v, text]) => h("option", { value: v, selected: settings[key] === v }, text)));
        el.addEventListener("change", () => client.api.patch("/me/privacy", { [key]: el.value }).catch((f) => dlg.fail(f)));
        return labelled(label, el);
      };
      const who = [["everyone", "Everyone"], ["contacts", "My contacts"], ["nobody", "Nobody"]];
      const receipts = h("input", { type: "checkbox", name: "read_receipts", checked: settings.read_receipts });
      receipts.addEventListener("change", () => client.api.patch("/me/privacy", { read_receipts: receipts.checked }).catch((f) => dlg.fail(f)));
      replace(privacy,
        select("last_seen", "Who sees my last seen", who),
        select("profile", "Who sees my photo and status", who),
        select("groups_add", "Who can add me to groups", who.slice(0, 2)),
        h("label", { class: "check" }, receipts, "Send read receipts"));
    }).catch((failure) => dlg.fail(failure));

    const devices = h("ul", { class: "devices", aria: { label: "Devices" } });
    const loadDevices = () => client.api.get("/devices").then(({ devices: list }) => {
      replace(devices, list.map((device) => {
        const row = h("li", {}, h("span", {}, device.name, device.current ? h("span", { class: "badge" }, "this device") : null),
                      h("span", { class: "muted small-text" }, new Date(device.created_at).toLocaleString()));
        if (!device.current) {
          const revoke = h("button", { type: "button", class: "small danger", aria: { label: `Log out ${device.name}` } }, "Log out");
          revoke.addEventListener("click", () => busy(revoke, async () => {
            await client.api.del(`/devices/${device.device_id}`);
            await loadDevices();
          }, dlg));
          row.append(revoke);
        }
        return row;
      }));
    }).catch((failure) => dlg.fail(failure));
    loadDevices();

    const notifyState = h("p", { class: "muted", role: "status" }, notificationState());
    const notify = h("button", { type: "button" }, "Enable notifications");
    notify.addEventListener("click", () => busy(notify, async () => {
      notifyState.textContent = await enableNotifications(client.api);
    }, dlg));

    const blocked = h("ul", { class: "devices", aria: { label: "Blocked users" } },
      Array.from(client.blocks).map((id) => {
        const unblock = h("button", { type: "button", class: "small" }, "Unblock");
        unblock.addEventListener("click", () => busy(unblock, async () => { await client.block(id, false); unblock.closest("li").remove(); }, dlg));
        return h("li", {}, h("span", {}, client.nameOf(id)), unblock);
      }));

    const logout = h("button", { type: "button", class: "danger" }, "Log out");
    logout.addEventListener("click", () => { dlg.close(); onLogout(); });
    return h("div", { class: "stack" },
      h("section", { aria: { label: "Profile" } }, h("h3", {}, "Profile"),
        h("p", { class: "muted" }, `@${me.handle}`), labelled("Display name", name), labelled("About", status),
        h("div", { class: "actions start" }, save)),
      h("section", { aria: { label: "Privacy" } }, h("h3", {}, "Privacy"), privacy),
      h("section", { aria: { label: "Blocked" } }, h("h3", {}, "Blocked users"),
        client.blocks.size ? blocked : h("p", { class: "muted" }, "Nobody")),
      h("section", { aria: { label: "Notifications" } }, h("h3", {}, "Notifications"), notifyState,
        h("div", { class: "actions start" }, notify)),
      h("section", { aria: { label: "Devices" } }, h("h3", {}, "Devices"), devices),
      h("div", { class: "actions start" }, logout));
  }, { wide: true });
}
