// Attachments: thumbnails fetched with the token (shown as blob: URLs), signed links
// for players and downloads, and the lightbox.
import { h } from "./dom.js";
import { bytes } from "./format.js";
import { icon } from "./icons.js";

const blobs = new Map();
const links = new Map();

function blobUrl(api, path) {
  if (!blobs.has(path)) {
    blobs.set(path, api.blob(path).then((blob) => URL.createObjectURL(blob)).catch((error) => {
      blobs.delete(path);
      throw error;
    }));
  }
  return blobs.get(path);
}

/** A signed URL for <video>, <audio> and downloads (no header can be set on those). */
function signedUrl(api, mediaId) {
  if (!links.has(mediaId)) {
    links.set(mediaId, api.post(`/media/${mediaId}/link`, { ttl_s: 86400 }).then((r) => r.url)
      .catch((error) => { links.delete(mediaId); throw error; }));
  }
  return links.get(mediaId);
}

export function openLightbox(api, attachment) {
  const img = h("img", { alt: attachment.filename || "image", class: "lightbox-img" });
  const close = h("button", { type: "button", class: "icon-button lightbox-close", aria: { label: "Close" } }, icon("close"));
  const dialog = h("dialog", { class: "lightbox", aria: { label: `Image ${attachment.filename || ""}`.trim() } },
    close, img);
  close.addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (event) => { if (event.target === dialog) dialog.close(); });
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
  blobUrl(api, `/media/${attachment.media_id}`).then((url) => { img.src = url; }).catch(() => {
    img.alt = "The image could not be loaded";
  });
}

export function attachmentView(api, attachment) {
  const name = attachment.filename || "file";
  if (attachment.kind === "image" && attachment.thumbnails && attachment.thumbnails.length) {
    const size = attachment.thumbnails.includes(320) ? 320 : attachment.thumbnails[0];
    const img = h("img", { alt: name, class: "thumb", loading: "lazy", decoding: "async" });
    if (attachment.width && attachment.height) {
      const scale = Math.min(1, size / Math.max(attachment.width, attachment.height));
      img.width = Math.round(attachment.width * scale);
      img.height = Math.round(attachment.height * scale);
    }
    blobUrl(api, `/media/${attachment.media_id}/thumbnail?size=${size}`)
      .then((url) => { img.src = url; })
      .catch(() => { img.alt = `${name} (could not be loaded)`; });
    return h("button", { type: "button", class: "thumb-button", aria: { label: `Open image ${name}` },
                         onclick: () => openLightbox(api, attachment) }, img);
  }
  if (attachment.kind === "video" || attachment.kind === "audio") {
    const player = h(attachment.kind, { controls: true, preload: "metadata", class: `player ${attachment.kind}`,
                                        aria: { label: name } });
    signedUrl(api, attachment.media_id).then((url) => { player.src = url; }).catch(() => {});
    return player;
  }
  const link = h("a", { class: "file-link", download: name, rel: "noopener" },
    icon("file"),
    h("span", { class: "file-name" }, name),
    h("span", { class: "file-size" }, bytes(attachment.size || 0)));
  link.setAttribute("aria-label", `Download ${name}`);
  signedUrl(api, attachment.media_id).then((url) => { link.href = url; }).catch(() => {});
  return link;
}
