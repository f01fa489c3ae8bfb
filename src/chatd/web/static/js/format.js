// Formatting of times, sizes and message text (links made clickable, as text nodes).
import { h } from "./dom.js";

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: "long", day: "numeric", month: "long" });
const yearDayFmt = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "long", year: "numeric" });
const shortFmt = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short" });

export function clock(ms) {
  return timeFmt.format(new Date(ms));
}

function startOfDay(ms) {
  const d = new Date(ms);
  d.setHours(0, 0, 0, 0);
  return d.getTime();
}

export function dayKey(ms) {
  return startOfDay(ms);
}

/** "Today", "Yesterday", a weekday name within the week, else a date. */
export function dayLabel(ms) {
  const today = startOfDay(Date.now());
  const day = startOfDay(ms);
  const days = Math.round((today - day) / 86_400_000);
  if (days === 0) return "Today";
  if (days === 1) return "Yesterday";
  if (days < 7 && days > 0) return dayFmt.format(new Date(ms)).split(",")[0];
  const sameYear = new Date(ms).getFullYear() === new Date().getFullYear();
  return sameYear ? dayFmt.format(new Date(ms)) : yearDayFmt.format(new Date(ms));
}

/** The conversation list's time: a clock today, "Yesterday", else a short date. */
export function listTime(ms) {
  if (!ms) return "";
  const days = Math.round((startOfDay(Date.now()) - startOfDay(ms)) / 86_400_000);
  if (days === 0) return clock(ms);
  if (days === 1) return "Yesterday";
  return shortFmt.format(new Date(ms));
}

export function lastSeen(ms) {
  if (!ms) return "offline";
  const days = Math.round((startOfDay(Date.now()) - startOfDay(ms)) / 86_400_000);
  if (days === 0) return `last seen today at ${clock(ms)}`;
  if (days === 1) return `last seen yesterday at ${clock(ms)}`;
  return `last seen ${shortFmt.format(new Date(ms))} at ${clock(ms)}`;
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MB`;
  return `${(n / 1024 ** 3).toFixed(1)} GB`;
}

const LINK = /\bhttps?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]]/gi;

/** Text with its http(s) links as anchors: a list of text nodes and <a> elements. */
export function linkify(text) {
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(LINK)) {
    if (match.index > last) parts.push(text.slice(last, match.index));
    let href = null;
    try {
      const url = new URL(match[0]);
      if (url.protocol === "http:" || url.protocol === "https:") href = url.href;
    } catch { /* not a URL after all: left as text */ }
    parts.push(href
      ? h("a", { href, target: "_blank", rel: "noopener noreferrer nofollow" }, match[0])
      : match[0]);
    last = match.index + match[0].length;
  }
  if (last < text.length) parts.push(text.slice(last));
  return parts;
}

export function initials(name) {
  const words = (name || "?").trim().split(/\s+/).filter(Boolean);
  const letters = words.slice(0, 2).map((w) => Array.from(w)[0] || "");
  return letters.join("").toUpperCase() || "?";
}

/** A stable hue for an avatar, from an id. */
export function hueOf(id) {
  let hash = 0;
  for (const ch of String(id)) hash = (hash * 31 + ch.charCodeAt(0)) % 360;
  return hash;
}

export const TIMER_CHOICES = [
  [0, "Off"], [86400, "24 hours"], [604800, "7 days"], [7776000, "90 days"],
];

export function timerLabel(seconds) {
  const found = TIMER_CHOICES.find(([s]) => s === seconds);
  return found ? found[1] : `${seconds} s`;
}
