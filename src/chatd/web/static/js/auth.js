// The sign-in screen: log in or register, with "remember me".
import { describe } from "./api.js";
import { h, uid } from "./dom.js";
import { deviceName, saveSession } from "./session.js";

function field(label, input) {
  const id = uid("f");
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input);
}

export function authView(api, onSignedIn, notice = "") {
  let mode = "login";
  const error = h("p", { class: "form-error", role: "alert", hidden: !notice }, notice);
  const handle = h("input", { name: "handle", autocomplete: "username", required: true,
                              autocapitalize: "none", spellcheck: "false", maxlength: 32 });
  const password = h("input", { name: "password", type: "password", required: true,
                                autocomplete: "current-password", minlength: 8 });
  const displayName = h("input", { name: "display_name", autocomplete: "name", maxlength: 64 });
  const remember = h("input", { type: "checkbox", name: "remember" });
  const nameField = field("Display name", displayName);
  const submit = h("button", { type: "submit", class: "primary wide" }, "Log in");
  const heading = h("h1", { id: "auth-title" }, "Log in to chatd");
  const switcher = h("button", { type: "button", class: "link" }, "Create an account");
  const switchText = h("span", {}, "New here? ");

  function setMode(next) {
    mode = next;
    const registering = mode === "register";
    nameField.hidden = !registering;
    displayName.required = registering;
    password.autocomplete = registering ? "new-password" : "current-password";
    heading.textContent = registering ? "Create your chatd account" : "Log in to chatd";
    submit.textContent = registering ? "Create account" : "Log in";
    switchText.textContent = registering ? "Have an account? " : "New here? ";
    switcher.textContent = registering ? "Log in" : "Create an account";
  }
  switcher.addEventListener("click", () => {
    error.hidden = true;
    setMode(mode === "login" ? "register" : "login");
  });

  const form = h("form", { class: "auth-card", aria: { labelledby: "auth-title" }, novalidate: true },
    h("div", { class: "brand" }, h("span", { class: "brand-mark", aria: { hidden: "true" } }), "chatd"),
    heading,
    field("Username or phone", handle),
    nameField,
    field("Password", password),
    h("label", { class: "check" }, remember, "Remember me on this device"),
    error,
    submit,
    h("p", { class: "switch" }, switchText, switcher));
  setMode("login");

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    if (!handle.value.trim() || password.value.length < 8
        || (mode === "register" && !displayName.value.trim())) {
      error.textContent = password.value.length < 8 && handle.value.trim()
        ? "The password needs at least 8 characters." : "Please fill in every field.";
      error.hidden = false;
      return;
    }
    submit.disabled = true;
    try {
      if (mode === "register") {
        await api.request("POST", "/register", {
          handle: handle.value.trim(), password: password.value,
          display_name: displayName.value.trim(),
        }, { auth: false });
      }
      const login = await api.request("POST", "/login", {
        handle: handle.value.trim(), password: password.value, device_name: deviceName(),
      }, { auth: false });
      const session = { token: login.token, user_id: login.user_id, device_id: login.device_id };
      saveSession(session, remember.checked);
      onSignedIn(session);
    } catch (failure) {
      error.textContent = failure.code === "bad_credentials"
        ? "Wrong username or password." : failure.code === "handle_taken"
        ? "That username is taken." : describe(failure);
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });
  requestAnimationFrame(() => handle.focus());
  return h("main", { class: "auth" }, form);
}
