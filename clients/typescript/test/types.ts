// Compile-time checks of the typed events (`npm run typecheck`); never run.
import { HeraldClient } from "../src/index.js";
import { useNotifications } from "../src/react.js";

const client = new HeraldClient({ url: "http://127.0.0.1:8080", token: () => "token" });
client.on("connected", (hello, meta) => {
  const user: string = hello.userId;
  const topics: string[] = hello.topics;
  const transport: "websocket" | "sse" = meta.transport;
  return [user, topics, transport];
});
client.on("notification:new", (notification) => {
  const read: boolean = notification.read;
  return read;
});
client.on("recovered", (answer) => {
  const complete: boolean = answer.recovered;
  const missed: number = answer.missed;
  return [complete, missed];
});
client.on("notification:unread-count", ({ count }) => count + 1);
client.on("state", ({ state }) => {
  const known: "idle" | "connecting" | "open" | "reconnecting" | "closed" = state;
  return known;
});
client.on("custom:event", (payload) => {
  // @ts-expect-error an event Herald does not know carries `unknown`
  return payload.anything;
});
// @ts-expect-error `connected` carries no such field
client.on("connected", (hello) => hello.nope);
// @ts-expect-error the unread count is a number
client.on("notification:unread-count", ({ count }) => count.toUpperCase());

export function Badge(): number | null {
  const { unreadCount, connected, client: herald } = useNotifications("token", { url: "http://127.0.0.1:8080" });
  const maybe: HeraldClient | null = herald;
  return connected && maybe ? unreadCount : null;
}
