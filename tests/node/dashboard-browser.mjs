// Drives Herald's /dashboard in headless Chromium (Debian's /usr/bin/chromium through
// playwright-core) for Herald's Rust tests, and reports each step as a JSON line:
// {"kind":"step","name":...} ... {"kind":"done"}, or {"kind":"failed","error":...}.
// Env: HERALD_URL, HERALD_API_KEY, HERALD_TOKEN (a token of user alice),
// HERALD_SCREENSHOT (where to write the dashboard's screenshot).
import { chromium } from "playwright-core";

const url = process.env.HERALD_URL.replace(/\/$/, "");
const out = (record) => process.stdout.write(JSON.stringify(record) + "\n");
const step = (name, detail = {}) => out({ kind: "step", name, ...detail });
const MESSAGE = "Hello from the dashboard test";

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  step("browser");

  // The dashboard asks for a credential, refuses a wrong one, takes the API key.
  const admin = await context.newPage();
  const first = await admin.goto(`${url}/dashboard`);
  step("login-form", { status: first.status() });
  await admin.fill("#credential", "not-the-key");
  await admin.click("#sign-in");
  await admin.waitForSelector("#error");
  step("refused", { error: await admin.textContent("#error") });
  await admin.fill("#credential", process.env.HERALD_API_KEY);
  await admin.click("#sign-in");
  await admin.waitForFunction(() => document.getElementById("live")?.textContent === "live");
  step("dashboard-live");

  // Another page holds a browser WebSocket client and a browser EventSource client of alice.
  const client = await context.newPage();
  await client.goto(`${url}/health`);
  await client.evaluate(
    ({ token }) =>
      new Promise((resolve, reject) => {
        window.received = { ws: [], sse: [] };
        let ready = 0;
        const opened = () => (++ready === 2 ? resolve() : undefined);
        const ws = new WebSocket(`${location.origin.replace("http", "ws")}/ws?token=${token}`);
        ws.onmessage = (event) => {
          const frame = JSON.parse(event.data);
          if (frame.type === "connected") opened();
          else window.received.ws.push(frame);
        };
        ws.onerror = () => reject(new Error("websocket failed"));
        const sse = new EventSource(`/events?token=${token}`);
        sse.addEventListener("connected", opened);
        sse.addEventListener("notification", (event) => window.received.sse.push(JSON.parse(event.data)));
        window.clients = { ws, sse };
        // A connection with a bad token: its refusal shows among the recent errors.
        new WebSocket(`${location.origin.replace("http", "ws")}/ws?token=not-a-token`);
      }),
    { token: process.env.HERALD_TOKEN },
  );
  step("clients-connected");

  // The dashboard sees them appear, and the refused one among the errors.
  await admin.waitForFunction(
    () =>
      Number(document.getElementById("count-ws").textContent) >= 1 &&
      Number(document.getElementById("count-sse").textContent) >= 1,
  );
  await admin.waitForFunction(() => document.getElementById("errors").textContent.includes("TOKEN_INVALID"));
  step("clients-shown", {
    ws: await admin.textContent("#count-ws"),
    sse: await admin.textContent("#count-sse"),
    errors: await admin.textContent("#errors"),
  });

  // A notification sent from the form reaches both browser clients.
  await admin.fill("#send-topic", "user:alice");
  await admin.fill("#send-message", MESSAGE);
  await admin.click("#send-button");
  await admin.waitForFunction(() => document.getElementById("send-result").textContent.startsWith("sent to user:alice"));
  step("sent", { result: await admin.textContent("#send-result") });
  await client.waitForFunction(
    (message) =>
      window.received.ws.some((frame) => frame.type === "notification" && frame.payload.message === message) &&
      window.received.sse.some((payload) => payload.message === message),
    MESSAGE,
  );
  step("received", { received: await client.evaluate(() => window.received) });

  // The busiest topics list alice's, and the deliveries were counted.
  await admin.waitForFunction(
    () =>
      document.getElementById("topics").textContent.includes("user:alice") &&
      Number(document.getElementById("delivered").textContent) >= 2,
  );
  await admin.screenshot({ path: process.env.HERALD_SCREENSHOT, fullPage: true });
  step("screenshot", { path: process.env.HERALD_SCREENSHOT });
  out({ kind: "done" });
} catch (error) {
  out({ kind: "failed", error: String(error?.stack ?? error) });
} finally {
  await browser.close();
}
