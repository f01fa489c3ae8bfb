// chatd's service worker: shows Web Push notifications and focuses the app when one is
// clicked. It caches nothing (the app needs the server anyway). A push's data is JSON,
// {"title", "body", "conversation_id"} (docs/web.md); anything else shows a generic line.
self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("push", (event) => {
  let data = {};
  try { data = event.data ? event.data.json() : {}; } catch { data = {}; }
  const title = typeof data.title === "string" && data.title ? data.title : "chatd";
  const body = typeof data.body === "string" ? data.body : "New message";
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
