// Sign-in for the pages. The session lives in sessionStorage: one identity per tab, so a
// mentor and a student (or two agents) can be tried side by side in one browser.
import { Http } from "./client.js";
import { h } from "./dom.js";

const KEY = "studyhall:session";

export function loadSession() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY) || "null");
  } catch {
    return null;
  }
}

export function saveSession(session) {
  sessionStorage.setItem(KEY, JSON.stringify(session));
}

export async function signOut(session) {
  sessionStorage.removeItem(KEY);
  if (session?.token) await new Http("", session.token).post("/api/auth/logout").catch(() => {});
}

/**
 * Render a sign-in form (and optionally registration) into `root`; resolves with
 * {token, user} once signed in. `roles`: roles this page is for (others get a message).
 */
export function signIn(root, { title, allowRegister = false, roles = null, hint = "" } = {}) {
  return new Promise((resolve) => {
    const error = h("p", { class: "form-error", role: "alert" });
    const email = h("input", { id: "signin-email", name: "email", type: "email", autocomplete: "username", required: true });
    const password = h("input", { id: "signin-password", name: "password", type: "password", autocomplete: "current-password", required: true, minlength: "1" });
    const name = h("input", { id: "signin-name", name: "name", autocomplete: "name" });
    const nameRow = h("div", { class: "field", hidden: true }, h("label", { for: "signin-name" }, "Your name"), name);
    let registering = false;
    const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
    const toggle = allowRegister
      ? h("button", { type: "button", class: "link", onclick: () => {
          registering = !registering;
          nameRow.hidden = !registering;
          name.required = registering;
          password.autocomplete = registering ? "new-password" : "current-password";
          submit.textContent = registering ? "Create account" : "Sign in";
          toggle.textContent = registering ? "I have an account" : "Create an account";
        } }, "Create an account")
      : null;

    const form = h("form", { class: "card signin", "aria-labelledby": "signin-title" },
      h("h2", { id: "signin-title" }, title || "Sign in"),
      hint ? h("p", { class: "muted" }, hint) : null,
      nameRow,
      h("div", { class: "field" }, h("label", { for: "signin-email" }, "Email"), email),
      h("div", { class: "field" }, h("label", { for: "signin-password" }, "Password"), password),
      error,
      h("div", { class: "row" }, submit, toggle));

    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      error.textContent = "";
      submit.disabled = true;
      try {
        const http = new Http("");
        const result = registering
          ? await http.post("/api/auth/register", { email: email.value, password: password.value, name: name.value })
          : await http.post("/api/auth/login", { email: email.value, password: password.value });
        if (roles && !roles.includes(result.user.role)) {
          error.textContent = `This page is for ${roles.join(" or ")} accounts; you are signed in as ${result.user.role}.`;
          return;
        }
        const session = { token: result.token, user: result.user };
        saveSession(session);
        form.remove();
        resolve(session);
      } catch (err) {
        error.textContent = err.message;
      } finally {
        submit.disabled = false;
      }
    });
    root.replaceChildren(form);
    email.focus();
  });
}

/** The signed-in session if still valid, else the sign-in form's result. */
export async function requireSession(root, options) {
  const saved = loadSession();
  if (saved?.token) {
    try {
      const { user } = await new Http("", saved.token).get("/api/me");
      if (!options?.roles || options.roles.includes(user.role)) return { token: saved.token, user };
    } catch {
      sessionStorage.removeItem(KEY);
    }
  }
  return signIn(root, options);
}

/** Header badge: who is signed in, with a sign-out button. */
export function userBadge(session, onOut) {
  return h("div", { class: "user-badge" },
    h("span", {}, `${session.user.name} · ${session.user.role}`),
    h("button", { type: "button", class: "link", onclick: async () => { await signOut(session); onOut?.(); location.reload(); } }, "Sign out"));
}
