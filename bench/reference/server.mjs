// The reference: what a user of the seeds would build instead of Herald.
// Seed 000's job on Node.js: Socket.IO v4 with JWT auth, a `user:{sub}` room per socket,
// `join_channel`, and published events relayed to rooms; plus a `ws` endpoint at /ws with
// Herald's `{type, payload}` frames. POST /api/publish {topic, event, data} (Bearer
// API key) delivers to both. With REDIS_URL set it uses @socket.io/redis-adapter.
import http from "node:http";
import { URL } from "node:url";
import { Server } from "socket.io";
import { WebSocketServer } from "ws";
import jwt from "jsonwebtoken";

const port = Number(process.env.PORT || 8080);
const secret = process.env.JWT_SECRET;
const apiKey = process.env.HERALD_API_KEY || "";
if (!secret) throw new Error("JWT_SECRET required");

const wsTopics = new Map(); // topic -> Set<ws>

const server = http.createServer((req, res) => {
  if (req.method === "POST" && req.url === "/api/publish") {
    if (req.headers.authorization !== `Bearer ${apiKey}`) {
      res.writeHead(401).end();
      return;
    }
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => {
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString());
      } catch {
        res.writeHead(400).end();
        return;
      }
      const event = body.event || "notification";
      io.to(body.topic).emit(event, body.data);
      const sockets = wsTopics.get(body.topic);
      if (sockets) {
        const frame = JSON.stringify({ type: event, payload: body.data });
        for (const ws of sockets) ws.send(frame);
      }
      res.writeHead(202, { "content-type": "application/json" }).end('{"success":true}');
    });
    return;
  }
  if (req.url === "/health") {
    res.writeHead(200).end("ok");
    return;
  }
  res.writeHead(404).end();
});

const io = new Server(server, { cors: { origin: "*" } });
if (process.env.REDIS_URL) {
  const { createClient } = await import("redis");
  const { createAdapter } = await import("@socket.io/redis-adapter");
  const pub = createClient({ url: process.env.REDIS_URL });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  io.adapter(createAdapter(pub, sub));
}

io.use((socket, next) => {
  try {
    socket.data.user = jwt.verify(socket.handshake.auth?.token, secret);
    next();
  } catch (error) {
    next(new Error("unauthorized"));
  }
});
io.on("connection", (socket) => {
  socket.join(`user:${socket.data.user.sub}`);
  socket.join("global");
  socket.on("join_channel", (data, ack) => {
    socket.join(`channel:${data.channelId}`);
    if (typeof ack === "function") ack({ success: true });
  });
  socket.on("leave_channel", (data, ack) => {
    socket.leave(`channel:${data.channelId}`);
    if (typeof ack === "function") ack({ success: true });
  });
});

const wss = new WebSocketServer({ noServer: true });
server.on("upgrade", (req, socket, head) => {
  const url = new URL(req.url, "http://localhost");
  if (url.pathname !== "/ws") return; // socket.io handles its own upgrades
  let user;
  try {
    user = jwt.verify(url.searchParams.get("token"), secret);
  } catch {
    socket.write("HTTP/1.1 401 Unauthorized\r\n\r\n");
    socket.destroy();
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    const topics = new Set([`user:${user.sub}`, "global"]);
    const join = (topic) => {
      topics.add(topic);
      if (!wsTopics.has(topic)) wsTopics.set(topic, new Set());
      wsTopics.get(topic).add(ws);
    };
    for (const topic of topics) join(topic);
    ws.on("message", (raw) => {
      let frame;
      try {
        frame = JSON.parse(raw);
      } catch {
        return;
      }
      if (frame.type === "subscribe") {
        join(frame.payload.topic);
        ws.send(JSON.stringify({ type: "subscribed", payload: { topic: frame.payload.topic } }));
      }
    });
    ws.on("close", () => {
      for (const topic of topics) {
        const set = wsTopics.get(topic);
        if (set) {
          set.delete(ws);
          if (set.size === 0) wsTopics.delete(topic);
        }
      }
    });
  });
});

server.listen(port, "127.0.0.1", () => console.log(`reference listening on ${port}`));
