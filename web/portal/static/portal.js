// The portal's one script: live views poll small JSON endpoints of the portal (same origin,
// the session cookie) and update their cells without reloading. Pages work without it.
"use strict";

function stateText(state) {
  if (!state) return "no data yet";
  const values = state.values || {};
  if (state.kind === "frame") return `frame ${values.width}×${values.height}, ${values.bytes} bytes`;
  const units = state.units || {};
  return Object.entries(values)
    .map(([key, value]) => `${key} ${value}${units[key] ? " " + units[key] : ""}`)
    .join(" · ");
}

function setText(element, text) {
  if (element && element.textContent !== text) {
    element.textContent = text;
    element.classList.remove("flash");
    void element.offsetWidth;
    element.classList.add("flash");
  }
}

const updaters = {
  devices(table, body) {
    for (const [name, state] of Object.entries(body.states || {})) {
      setText(table.querySelector(`[data-device="${CSS.escape(name)}"]`), stateText(state));
      setText(table.querySelector(`[data-device-time="${CSS.escape(name)}"]`), state ? state.time : "");
    }
  },
  instances(table, body) {
    for (const instance of body.instances || []) {
      let row = table.querySelector(`[data-instance="${CSS.escape(instance.instance_id)}"]`);
      if (!row) row = instanceRow(table, instance);
      setText(row.querySelector(".status"), instance.status + (instance.error ? " " + instance.error : ""));
      setText(row.querySelector(".node"), instance.node_id || "");
      const cell = row.querySelector(".url");
      if (instance.url && cell && !cell.querySelector("a")) {
        const link = document.createElement("a");
        link.href = instance.url; link.target = "_blank"; link.rel = "noopener"; link.textContent = "open the app";
        cell.appendChild(link);
      }
    }
  },
  nodes(root, body) {
    for (const node of body.nodes || []) {
      const card = root.querySelector(`[data-node="${CSS.escape(node.node_id)}"]`);
      if (!card) continue;
      setText(card.querySelector('[data-field="state"]'), node.state);
      setText(card.querySelector('[data-field="cpu"]'), `${Math.round(node.cpu_percent)} %`);
      setText(card.querySelector('[data-field="memory"]'),
        `${Math.round(node.memory_used_mb)} / ${Math.round(node.memory_total_mb)} MB`);
      setText(card.querySelector('[data-field="last_seen"]'), node.last_seen);
      for (const service of node.services) {
        const row = card.querySelector(`[data-service="${CSS.escape(service.service_id)}"]`);
        if (!row) continue;
        setText(row.querySelector(".state"), service.state);
        setText(row.querySelector(".restarts"), String(service.restarts));
      }
    }
    const waiting = root.querySelector("[data-waiting] tbody");
    const held = (body.waiting || []).map((w) => [w.service_id, w.kind, w.since, w.reason]);
    if (waiting && waiting.dataset.shown !== JSON.stringify(held)) {
      waiting.dataset.shown = JSON.stringify(held);
      const rows = held.length ? held : [["None: every placement found a node."]];
      waiting.replaceChildren(...rows.map((cells) => {
        const row = document.createElement("tr");
        for (const text of cells) {
          const td = document.createElement("td"); td.textContent = text;
          if (cells.length === 1) td.colSpan = 4;
          row.append(td);
        }
        return row;
      }));
    }
    const incidents = root.querySelector("[data-incidents] tbody");
    const lines = (body.incidents || []).map((i) => [i.time, i.service_id, i.node_id || "", i.kind, i.detail]);
    if (incidents && lines.length && incidents.dataset.shown !== JSON.stringify(lines)) {
      incidents.dataset.shown = JSON.stringify(lines);
      incidents.replaceChildren(...lines.slice().reverse().map((cells) => {
        const row = document.createElement("tr");
        for (const text of cells) { const td = document.createElement("td"); td.textContent = text; row.append(td); }
        return row;
      }));
    }
  },
  model(root, body) {
    for (const version of body.versions || []) {
      setText(root.querySelector(`[data-version-status="${CSS.escape(version.version)}"]`), version.status);
      const stages = root.querySelector(`[data-version-stages="${CSS.escape(version.version)}"]`);
      const deployment = version.deployment;
      if (stages && deployment && deployment.stages.length) {
        const items = deployment.stages.map((s) => `${s.stage} ${s.at} ${s.detail || ""}`.trim());
        if (stages.dataset.shown !== items.join("\n")) {
          stages.dataset.shown = items.join("\n");
          stages.replaceChildren(...deployment.stages.map((s) => {
            const li = document.createElement("li");
            const strong = document.createElement("strong");
            strong.textContent = s.stage;
            li.append(strong, ` ${s.at} ${s.detail || ""}`);
            return li;
          }));
        }
      }
      const replicas = root.querySelector(`[data-version-replicas="${CSS.escape(version.version)}"]`);
      if (replicas && deployment && deployment.replicas.length) {
        const text = deployment.replicas.map((r) => `${r.service_id} on ${r.node_id} ${r.url}`);
        if (replicas.dataset.shown !== text.join("\n")) {
          replicas.dataset.shown = text.join("\n");
          replicas.replaceChildren(...text.map((line) => { const li = document.createElement("li"); li.textContent = line; return li; }));
        }
      }
    }
  },
};

function localTime(instant, zone) {
  if (!instant) return "";
  const options = { weekday: "short", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZone: zone || "UTC", timeZoneName: "short" };
  try { return new Intl.DateTimeFormat("en-CA", options).format(new Date(instant)); } catch (error) { return instant; }
}

// A row for an instance that started after the page was made: the same cells as the server's.
function instanceRow(table, instance) {
  const body = table.querySelector("tbody");
  body.querySelectorAll("tr.empty").forEach((row) => row.remove());
  const row = document.createElement("tr");
  row.dataset.instance = instance.instance_id;
  const cells = [instance.instance_id, `${instance.app} ${instance.version || ""}`, instance.location];
  for (const text of cells) { const td = document.createElement("td"); td.textContent = text; row.append(td); }
  for (const name of ["status", "node", "url"]) { const td = document.createElement("td"); td.className = name; row.append(td); }
  const stops = document.createElement("td");
  stops.textContent = localTime(instance.stop_at, instance.timezone);
  row.append(stops);
  const actions = document.createElement("td");
  const token = document.querySelector('meta[name="csrf-token"]');
  if (table.dataset.stopUrl && token) {
    const form = document.createElement("form");
    form.className = "inline"; form.method = "post";
    form.action = table.dataset.stopUrl.replace("INSTANCE", encodeURIComponent(instance.instance_id));
    const hidden = document.createElement("input");
    hidden.type = "hidden"; hidden.name = "csrf_token"; hidden.value = token.content;
    const button = document.createElement("button");
    button.type = "submit"; button.className = "danger"; button.textContent = "Stop";
    form.append(hidden, button);
    actions.append(form);
  }
  row.append(actions);
  body.prepend(row);
  return row;
}

function poll(element) {
  const update = updaters[element.dataset.pollKind];
  const status = document.getElementById("live-status");
  const every = Number(element.dataset.pollEvery || 3000);
  async function tick() {
    try {
      const response = await fetch(element.dataset.poll, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (response.status === 401) { window.location.reload(); return; }
      if (response.ok) {
        update(element, await response.json());
        if (status) status.textContent = "live, updated " + new Date().toLocaleTimeString();
      } else if (status) {
        status.textContent = "live view paused: " + response.status;
      }
    } catch (error) {
      if (status) status.textContent = "live view paused: the portal does not answer";
    }
    setTimeout(tick, every);
  }
  setTimeout(tick, every);
}

function filterLocations() {
  const app = document.getElementById("s-app");
  const location = document.getElementById("s-location");
  if (!app || !location) return;
  const show = () => {
    const option = app.selectedOptions[0];
    const allowed = new Set((option ? option.dataset.locations : "").split(" ").filter(Boolean));
    for (const place of location.options) place.hidden = !allowed.has(place.value);
    if (location.selectedOptions[0] && location.selectedOptions[0].hidden) {
      const first = [...location.options].find((place) => !place.hidden);
      location.value = first ? first.value : "";
    }
  };
  app.addEventListener("change", show);
  show();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-poll]").forEach(poll);
  filterLocations();
});
