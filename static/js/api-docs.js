// The HTTP API reference (static/api-docs.html, served at /api/docs): renders this server's
// /api/openapi.json with DOM calls only (no innerHTML, nothing inline: the pages' CSP holds).
const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
};

// A schema as compact TypeScript-like text; $refs are resolved up to `depth` levels.
function schemaText(schema, components, depth = 3, indent = "") {
  if (!schema || typeof schema !== "object") return "any";
  if (schema.$ref) {
    const name = schema.$ref.split("/").pop();
    const target = components[name];
    return depth <= 0 || !target ? name : `${name} ${schemaText(target, components, depth - 1, indent)}`;
  }
  const union = schema.anyOf || schema.oneOf;
  if (union) return union.map((s) => schemaText(s, components, depth, indent)).join(" | ");
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (schema.type === "array") return `${schemaText(schema.items, components, depth, indent)}[]`;
  if (schema.type === "object" || schema.properties) {
    const props = Object.entries(schema.properties || {});
    if (!props.length) return "object";
    const required = new Set(schema.required || []);
    const inner = indent + "  ";
    const lines = props.map(([name, prop]) =>
      `${inner}${name}${required.has(name) ? "" : "?"}: ${schemaText(prop, components, depth, inner)}${constraints(prop)}`);
    return `{\n${lines.join("\n")}\n${indent}}`;
  }
  return (schema.format ? `${schema.type} (${schema.format})` : schema.type || "any") + constraints(schema);
}

function constraints(schema) {
  const parts = [];
  for (const [key, label] of [["minLength", "min length"], ["maxLength", "max length"], ["minimum", "≥"], ["maximum", "≤"],
    ["minItems", "min items"], ["maxItems", "max items"], ["default", "default"]]) {
    if (schema[key] !== undefined) parts.push(`${label} ${JSON.stringify(schema[key])}`);
  }
  return parts.length ? `  // ${parts.join(", ")}` : "";
}

function operationView(method, path, op, components) {
  const security = (op.security || []).flatMap((s) => Object.keys(s)).join(" or ") || "none";
  const body = el("div", { class: "body" });
  if (op.description) body.append(el("p", {}, op.description));
  body.append(el("p", { class: "muted" }, `Credentials: ${security}. Operation id: `, el("code", {}, op.operationId)));
  if (op.parameters?.length) {
    const rows = op.parameters.map((p) => el("tr", {}, el("td", {}, el("code", {}, p.name)), el("td", {}, p.in),
      el("td", {}, el("code", {}, schemaText(p.schema, components) + constraints(p.schema))), el("td", {}, p.description || "")));
    body.append(el("h3", {}, "Parameters"),
      el("table", {}, el("tr", {}, el("th", {}, "name"), el("th", {}, "in"), el("th", {}, "schema"), el("th", {}, "")), ...rows));
  }
  if (op.requestBody) {
    body.append(el("h3", {}, "Request body"));
    for (const [type, media] of Object.entries(op.requestBody.content)) {
      body.append(el("p", {}, el("code", {}, type)), el("div", { class: "api-schema" }, schemaText(media.schema, components)));
    }
  }
  body.append(el("h3", {}, "Responses"));
  const rows = Object.entries(op.responses).map(([status, response]) => {
    const content = Object.entries(response.content || {});
    const shape = content.map(([type, media]) => `${type}: ${schemaText(media.schema, components, 0)}`).join("; ");
    return el("tr", {}, el("td", {}, el("code", {}, status)), el("td", {}, response.description), el("td", {}, el("code", {}, shape)));
  });
  body.append(el("table", {}, el("tr", {}, el("th", {}, "status"), el("th", {}, ""), el("th", {}, "body")), ...rows));
  const details = el("details", { class: "api-op", id: op.operationId },
    el("summary", {}, el("span", { class: `api-method ${method}` }, method), el("span", { class: "api-path" }, path),
      el("span", {}, op.summary || ""), security === "none" ? null : el("span", { class: "api-lock" }, `auth: ${security}`)),
    body);
  details.dataset.search = `${method} ${path} ${op.summary || ""} ${(op.tags || []).join(" ")}`.toLowerCase();
  return details;
}

async function main() {
  const status = document.getElementById("status");
  let description;
  try {
    const response = await fetch("/api/openapi.json");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    description = await response.json();
  } catch (err) {
    status.textContent = `Could not load /api/openapi.json: ${err.message}`;
    return;
  }
  const components = description.components?.schemas || {};
  document.getElementById("intro").append(
    el("h2", {}, `${description.info.title} (version ${description.info.version}, OpenAPI ${description.openapi})`),
    el("p", {}, description.info.description),
    el("h3", {}, "Credentials"),
    el("ul", {}, ...Object.entries(description.components?.securitySchemes || {}).map(([name, scheme]) =>
      el("li", {}, el("code", {}, name), `: ${scheme.description || scheme.scheme}`))),
    el("h3", {}, "Not described here"),
    el("ul", {}, ...(description["x-excluded-routes"] || []).map((route) =>
      el("li", {}, el("code", {}, `${route.method || ""} ${route.path}`.trim()), `: ${route.reason}`))));
  const byTag = new Map();
  for (const [path, methods] of Object.entries(description.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const tag = op.tags?.[0] || "other";
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operationView(method, path, op, components));
    }
  }
  const container = document.getElementById("operations");
  for (const [tag, views] of [...byTag.entries()].sort()) {
    container.append(el("section", { class: "api-section" }, el("h2", { class: "api-tag" }, tag), ...views));
  }
  const count = [...byTag.values()].reduce((n, views) => n + views.length, 0);
  status.textContent = `${count} operations.`;
  document.getElementById("filter").addEventListener("input", (event) => {
    const words = event.target.value.toLowerCase().split(/\s+/).filter(Boolean);
    for (const section of container.children) {
      let shown = 0;
      for (const op of section.querySelectorAll(".api-op")) {
        op.hidden = !words.every((w) => op.dataset.search.includes(w));
        if (!op.hidden) shown += 1;
      }
      section.hidden = shown === 0;
    }
  });
  if (location.hash) document.getElementById(location.hash.slice(1))?.setAttribute("open", "");
}

main();
