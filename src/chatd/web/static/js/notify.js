// Notifications: a browser notification for a message that arrives while the tab is in
// the background, and a Web Push subscription through the service worker (/sw.js), for
// when no tab is open. Web Push needs the server's push support (GET /push/vapid); the
// in-tab notifications work without it.

export function notificationState() {
  if (!("Notification" in window)) return "This browser has no notifications.";
  if (Notification.permission === "granted") return "Notifications are on while this tab is in the background.";
  if (Notification.permission === "denied") return "Notifications are blocked in the browser's site settings.";
  return "Notifications are off.";
}

function keyBytes(base64url) {
  const text = atob(base64url.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(base64url.length / 4) * 4, "="));
  return Uint8Array.from(text, (c) => c.charCodeAt(0));
}

function base64url(buffer) {
  const text = String.fromCharCode(...new Uint8Array(buffer));
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** Ask for permission, then subscribe to Web Push if the server offers it. */
export async function enableNotifications(api) {
  if (!("Notification" in window)) return notificationState();
  const permission = await Notification.requestPermission();
  if (permission !== "granted") return notificationState();
  let pushNote;
  try {
    pushNote = await subscribePush(api);
  } catch (failure) {
    // In-tab notifications work without push: say why push did not, and carry on.
    pushNote = `Push notifications could not be set up: ${failure && failure.message ? failure.message : failure}.`;
  }
  return `${notificationState()} ${pushNote}`;
}

export async function subscribePush(api) {
  if (!("serviceWorker" in navigator) || !("PushManager" in window)) {
    return "This browser cannot receive push messages.";
  }
  let vapid;
  try {
    vapid = await api.get("/push/vapid");
  } catch (failure) {
    if (failure.status === 404) return "This server does not send push notifications.";
    throw failure;
  }
  const registration = await navigator.serviceWorker.register("/sw.js", { scope: "/" });
  await navigator.serviceWorker.ready;
  const key = vapid.public_key || vapid.key || vapid.vapid_public_key;
  let subscription = await registration.pushManager.getSubscription();
  if (!subscription) {
    subscription = await registration.pushManager.subscribe({
      userVisibleOnly: true, applicationServerKey: keyBytes(key),
    });
  }
  await api.post("/push/subscriptions", {
    kind: "webpush",
    endpoint: subscription.endpoint,
    keys: { p256dh: base64url(subscription.getKey("p256dh")), auth: base64url(subscription.getKey("auth")) },
  });
  return "Push notifications are on, also when no tab is open.";
}

/** Show a notification for an incoming message when the tab is not being looked at. */
export function notifyMessage(title, text, onClick) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  if (document.visibilityState === "visible" && document.hasFocus()) return;
  const notification = new Notification(title, { body: text, tag: title });
  notification.onclick = () => {
    window.focus();
    onClick();
    notification.close();
  };
}
