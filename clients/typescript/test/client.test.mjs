// The client against a real Herald (started by crates/herald-server/tests/it/typescript.rs,
// which passes HERALD_URL, HERALD_API_KEY and tokens). A TCP proxy in front of Herald cuts
// connections, holds new ones back, or refuses WebSocket upgrades, as a network would.
import assert from "node:assert/strict";
import net from "node:net";
import test from "node:test";

import { EventSource } from "eventsource";
import React from "react";
import TestRenderer from "react-test-renderer";
import WebSocket from "ws";

import { HeraldClient } from "../dist/index.js";
import { useNotifications } from "../dist/react.js";

globalThis.IS_REACT_ACT_ENVIRONMENT = false;
const url = process.env.HERALD_URL.replace(/\/$/, "");
const apiKey = process.env.HERALD_API_KEY;
const tokens = { alice: process.env.HERALD_TOKEN_ALICE, bob: process.env.HERALD_TOKEN_BOB, carol: process.env.HERALD_TOKEN_CAROL };
const fast = { initialMs: 50, maxMs: 400, factor: 2, jitter: 0.5 };

async function publish(topic, event, data) {
  const response = await fetch(`${url}/api/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: JSON.stringify({ topic, event, data }),
  });
  const text = await response.text();
  assert.equal(response.status, 202, text);
  return JSON.parse(text);
}

/** Resolves with the first call of `client.on(event)` that `accept`s, within 10 s. */
function next(client, event, accept = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within 10 s`)), 10_000);
    const stop = client.on(event, (payload, meta) => {
      if (!accept(payload, meta)) return;
      clearTimeout(timer);
      stop();
      resolve({ payload, meta });
    });
  });
}

/** A TCP proxy to Herald: `cut()` ends every connection, `hold()` refuses new ones until
 * `release()`, and `noWebSocket` refuses upgrades. */
async function proxy({ noWebSocket = false } = {}) {
  const target = new URL(url);
  const sockets = new Set();
  let holding = false;
  const server = net.createServer((client) => {
    if (holding) return client.destroy();
    sockets.add(client);
    client.once("data", (first) => {
      if (noWebSocket && /upgrade:\s*websocket/i.test(first.toString("latin1"))) return client.destroy();
      const upstream = net.connect(Number(target.port), target.hostname, () => {
        upstream.write(first);
        client.pipe(upstream).pipe(client);
      });
      sockets.add(upstream);
      const end = () => {
        client.destroy();
        upstream.destroy();
      };
      upstream.on("error", end).on("close", end);
      client.on("error", end).on("close", end);
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cut: () => sockets.forEach((socket) => socket.destroy()),
    hold: () => {
      holding = true;
    },
    release: () => {
      holding = false;
    },
    close: () => {
      sockets.forEach((socket) => socket.destroy());
      server.close();
    },
  };
}

test("connects over WebSocket and delivers typed events with their positions", async () => {
  const client = new HeraldClient({ url, token: tokens.alice, WebSocket, backoff: fast });
  const hello = next(client, "connected");
  client.connect();
  const { payload, meta } = await hello;
  assert.equal(payload.userId, "alice");
  assert.equal(meta.transport, "websocket");
  assert.equal(client.state, "open");
  const arrived = next(client, "deploy:done");
  const published = await publish("user:alice", "deploy:done", { build: 7 });
  const event = await arrived;
  assert.deepEqual(event.payload, { build: 7 });
  assert.equal(event.meta.position, `${published.epoch}:${published.offset}`);
  assert.equal(client.position, event.meta.position);
  client.close();
  assert.equal(client.state, "closed");
});

test("reconnects with backoff after the network drops and recovers what it missed, in order, once", async () => {
  const network = await proxy();
  const states = [];
  const tokenCalls = [];
  const client = new HeraldClient({
    url: network.url,
    token: () => {
      tokenCalls.push(Date.now());
      return tokens.bob;
    },
    topics: ["channel:news"],
    WebSocket,
    backoff: fast,
  });
  client.on("state", ({ state }) => states.push(state));
  const received = [];
  client.on("tick", (payload) => received.push(payload.n));
  client.on("headline", (payload) => received.push(payload.title));
  const subscribed = next(client, "subscribed");
  client.connect();
  assert.equal((await subscribed).payload.topic, "channel:news");
  const first = next(client, "tick");
  await publish("user:bob", "tick", { n: 1 });
  await first;

  // The network fails; new connections are held back while events go on being published.
  network.hold();
  const down = next(client, "state", ({ state }) => state === "reconnecting");
  network.cut();
  await down;
  await publish("user:bob", "tick", { n: 2 });
  await publish("channel:news", "headline", { title: "missed headline" });
  await publish("user:bob", "tick", { n: 3 });
  const recovered = next(client, "recovered");
  network.release();
  const answer = (await recovered).payload;
  assert.equal(answer.recovered, true, JSON.stringify(answer));
  const headline = received.includes("missed headline") ? null : next(client, "headline");
  await headline;
  await publish("user:bob", "tick", { n: 4 });
  await next(client, "tick", (payload) => payload.n === 4);
  assert.deepEqual(
    received.filter((item) => typeof item === "number"),
    [1, 2, 3, 4],
    "every event once, in order",
  );
  assert.ok(received.includes("missed headline"), "the extra topic was subscribed again with its position");
  assert.ok(tokenCalls.length >= 2, "the token is asked for again at every connect");
  assert.ok(states.includes("reconnecting") && states.at(-1) === "open", states.join(","));
  client.close();
  network.close();
});

test("falls back to SSE where WebSocket cannot connect, and recovers over SSE too", async () => {
  const network = await proxy({ noWebSocket: true });
  const client = new HeraldClient({ url: network.url, token: tokens.carol, WebSocket, EventSource, backoff: fast });
  const open = next(client, "state", ({ state, transport }) => state === "open" && transport === "sse");
  client.connect();
  await open;
  assert.equal(client.transport, "sse");
  const arrived = next(client, "alert");
  const published = await publish("user:carol", "alert", { level: "high" });
  const event = await arrived;
  assert.deepEqual(event.payload, { level: "high" });
  assert.equal(event.meta.transport, "sse");
  assert.equal(event.meta.position, `${published.epoch}:${published.offset}`);

  network.hold();
  const down = next(client, "state", ({ state }) => state === "reconnecting");
  network.cut();
  await down;
  await publish("user:carol", "alert", { level: "missed" });
  const missed = next(client, "alert", (payload) => payload.level === "missed");
  const recovered = next(client, "recovered");
  network.release();
  await missed;
  assert.equal((await recovered).payload.recovered, true);
  client.close();
  network.close();
});

test("useNotifications shows stored notifications and the unread count as they arrive", async () => {
  let latest = null;
  let wake = () => {};
  function Inbox() {
    const state = useNotifications(tokens.alice, { url, WebSocket, backoff: fast });
    latest = state;
    wake();
    return React.createElement("span", null, `${state.notifications.length}/${state.unreadCount ?? "-"}`);
  }
  const until = (predicate) =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`hook state never matched: ${JSON.stringify(latest)}`)), 10_000);
      wake = () => {
        if (latest && predicate(latest)) {
          clearTimeout(timer);
          wake = () => {};
          resolve(latest);
        }
      };
      wake();
    });
  const renderer = TestRenderer.create(React.createElement(Inbox));
  await until((state) => state.connected);
  const response = await fetch(`${url}/api/notifications`, {
    method: "POST",
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: JSON.stringify({ userId: "alice", type: "SYSTEM", payload: { message: "from the hook test" } }),
  });
  const created = await response.text();
  assert.equal(response.status, 201, created);
  const state = await until((current) => current.notifications.length === 1 && current.unreadCount !== null);
  assert.equal(state.notifications[0].payload.message, "from the hook test");
  assert.ok(state.unreadCount >= 1);
  // Effects' clean-ups run when React flushes the unmount.
  TestRenderer.act(() => renderer.unmount());
  assert.equal(latest.client.state, "closed", "unmounting closes the connection");
});
