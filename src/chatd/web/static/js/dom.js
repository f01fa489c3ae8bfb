// DOM helpers. Every string a user wrote reaches the page through text nodes
// (textContent / createTextNode): this module never parses HTML.

/**
 * h("button", {class: "x", type: "button", onclick: fn, aria: {label: "Send"}}, "text", child)
 * Props: `class`, `text`, `on<event>` handlers, `aria` (aria-* attributes), `data`
 * (data-* attributes), `hidden`, `disabled`, `checked`, `value`; anything else is an
 * attribute. Children: nodes, strings (as text), null/false (skipped), arrays.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "aria") {
      for (const [name, v] of Object.entries(value)) {
        if (v !== undefined && v !== null) el.setAttribute(`aria-${name}`, String(v));
      }
    } else if (key === "data") {
      for (const [name, v] of Object.entries(value)) el.dataset[name] = String(v);
    } else if (key === "hidden" || key === "disabled" || key === "checked"
               || key === "value" || key === "selected" || key === "multiple") {
      el[key] = value;
    } else if (key === "style") {
      throw new Error("inline styles are refused by the page's CSP");
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace all children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

let uniqueCounter = 0;
export function uid(prefix = "id") {
  uniqueCounter += 1;
  return `${prefix}-${uniqueCounter}`;
}
