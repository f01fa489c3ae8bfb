// The app's entry: the sign-in screen, or the chat with a stored session.
import { Api } from "./api.js";
import { authView } from "./auth.js";
import { ChatClient } from "./client.js";
import { h, replace } from "./dom.js";
import { clearSession, loadSession } from "./session.js";
import { MainView } from "./ui.js";

const root = document.getElementById("root");
let session = loadSession();
let client = null;

const api = new Api(() => (session ? session.token : null), () => signOut("This device was logged out. Please log in again."));

function signOut(notice = "") {
  if (client) client.stop();
  client = null;
  session = null;
  clearSession();
  if (location.hash) history.replaceState(null, "", "/");
  showAuth(notice);
}

function showAuth(notice) {
  document.title = "chatd";
  replace(root, authView(api, (fresh) => { session = fresh; showChat(); }, notice));
}

async function showChat() {
  replace(root, h("div", { class: "loading", role: "status" }, "Loading your chats…"));
  client = new ChatClient(api, session);
  const view = new MainView(client, {
    onLogout: async () => {
      try { await api.post("/logout"); } catch { /* the token is dropped anyway */ }
      signOut();
    },
  });
  client.addEventListener("change", (event) => {
    if (event.detail.what === "unauthorized") signOut("This device was logged out. Please log in again.");
  });
  try {
    await client.start();
  } catch (failure) {
    if (!session) return; // signed out by a 401 meanwhile
    replace(root, h("div", { class: "loading", role: "alert" },
      "Cannot load your chats: the server is unreachable. ",
      h("button", { type: "button", class: "link", onclick: () => showChat() }, "Try again")));
    return;
  }
  replace(root, view.root);
  view.renderList();
  view.renderConnection();
  view.route();
  if (!location.hash) view.renderPane();
}

if (session) showChat(); else showAuth("");
