// chatd's service worker: shows Web Push notifications and focuses the app when one is
// clicked. It caches nothing (the app needs the server anyway). A push's data is the
// notifier's JSON (push branch, domain/push.py `payload`): {conversation_id, seq, unread,
// sender_name?, preview?}; the name and preview are there only when the user allows
// previews, so without them a generic line is shown.
self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("push", (event) => {
  let data = {};
  try { data = event.data ? event.data.json() : {}; } catch { data = {}; }
  const name = typeof data.sender_name === "string" && data.sender_name ? data.sender_name : "";
  const title = name || "chatd";
  const unread = Number.isInteger(data.unread) && data.unread > 1 ? `${data.unread} new messages` : "New message";
  const body = typeof data.preview === "string" && data.preview ? data.preview : unread;
  const tag = typeof data.conversation_id === "string" ? data.conversation_id : "chatd";
  event.waitUntil(self.registration.showNotification(title, {
    body, tag, data: { conversation_id: data.conversation_id || "" },
  }));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const id = event.notification.data && event.notification.data.conversation_id;
  const target = id ? `/#/c/${id}` : "/";
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    for (const client of windows) {
      if ("focus" in client) {
        await client.focus();
        if (id && "navigate" in client) await client.navigate(target);
        return;
      }
    }
    await self.clients.openWindow(target);
  })());
});
