// Herald's client: plain WebSocket (`/ws`) with reconnect, exponential backoff with jitter
// and recovery of what was missed (`since`), falling back to Server-Sent Events (`/events`)
// where WebSocket cannot connect. Events are typed by name (`HeraldEvents`).

/** A notification from Herald's inbox (`notification:new`). */
export interface Notification {
  id: string;
  type: string;
  payload: unknown;
  read: boolean;
  seen: boolean;
  createdAt: string;
  [field: string]: unknown;
}

/** What Herald sends when a session opens. */
export interface Hello {
  userId: string;
  sessionId: string;
  topics: string[];
}

/** The answer to a reconnect that named a position. */
export interface Recovered {
  /** false: some of what was missed is gone; refetch state (e.g. the inbox). */
  recovered: boolean;
  missed: number;
  epoch: string;
  offset: number;
}

/** An error Herald answered (`{code, message}`), or one of the client's own. */
export interface HeraldError {
  code: string;
  message?: string;
  event?: string;
  retryAfterMs?: number;
}

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";
export type Transport = "websocket" | "sse";

/** Events with a known payload; any other name carries `unknown`. */
export interface HeraldEvents {
  connected: Hello;
  recovered: Recovered;
  notification: unknown;
  "notification:new": Notification;
  "notification:unread-count": { count: number };
  subscribed: { topic: string };
  unsubscribed: { topic: string };
  error: HeraldError;
  /** The client's own: the connection state changed. */
  state: { state: ConnectionState; transport: Transport | null };
}

export type EventName = keyof HeraldEvents | (string & {});
export type Payload<E extends string> = E extends keyof HeraldEvents ? HeraldEvents[E] : unknown;

/** The envelope of every event: its name, payload and, for published events, position. */
export interface Meta {
  event: string;
  /** `epoch:offset` of a published event. */
  position?: string;
  transport: Transport;
}

export type Handler<E extends string> = (payload: Payload<E>, meta: Meta) => void;

export interface Backoff {
  /** First delay after a failure, ms (500). */
  initialMs?: number;
  /** Longest delay, ms (15 000). */
  maxMs?: number;
  /** Growth per failed attempt (2). */
  factor?: number;
  /** Fraction of the delay chosen at random (0.5: between 50 % and 100 %). */
  jitter?: number;
}

type WebSocketLike = {
  readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
};
type EventSourceLike = {
  onopen: ((event: unknown) => void) | null;
  onerror: ((event: unknown) => void) | null;
  addEventListener(name: string, listener: (event: { data: string; lastEventId?: string }) => void): void;
  close(): void;
};

export interface HeraldOptions {
  /** Herald's base URL, e.g. `https://rt.example.com`. */
  url: string;
  /** The user's JWT, or a function asked again at every (re)connect (a fresh token). */
  token: string | (() => string | Promise<string>);
  /** `auto` (WebSocket, SSE when WebSocket cannot connect), or one transport only. */
  transport?: "auto" | Transport;
  /** Topics beyond the user's own and `global`, subscribed on every (re)connect. */
  topics?: string[];
  backoff?: Backoff;
  /** Consecutive WebSocket attempts that never opened before `auto` switches to SSE (2). */
  fallbackAfter?: number;
  /** Reconnect after the connection ends (true). */
  reconnect?: boolean;
  /** Constructors where the platform has none (Node.js 20: `ws`, `eventsource`). */
  WebSocket?: new (url: string) => WebSocketLike;
  EventSource?: new (url: string) => EventSourceLike;
}

/** Names every SSE stream listens for, beyond those the application asks for. */
const BUILT_IN = ["connected", "recovered", "notification", "notification:new", "notification:unread-count", "error"];
/** Close codes after which reconnecting cannot help. */
const FINAL_CLOSE = new Set([1008]);

export class HeraldClient {
  private readonly options: Required<Omit<HeraldOptions, "WebSocket" | "EventSource" | "topics">> & HeraldOptions;
  private readonly handlers = new Map<string, Set<(payload: unknown, meta: Meta) => void>>();
  private readonly topics = new Set<string>();
  private ws: WebSocketLike | null = null;
  private sse: EventSourceLike | null = null;
  private sseNames = new Set<string>();
  private timer: ReturnType<typeof setTimeout> | null = null;
  private attempts = 0;
  private wsFailures = 0;
  private stopped = true;
  private current: ConnectionState = "idle";
  private active: Transport | null = null;
  private lastPosition: string | undefined;

  constructor(options: HeraldOptions) {
    this.options = {
      transport: "auto",
      backoff: {},
      fallbackAfter: 2,
      reconnect: true,
      ...options,
      url: options.url.replace(/\/+$/, ""),
    };
    for (const topic of options.topics ?? []) this.topics.add(topic);
  }

  /** The connection's state. */
  get state(): ConnectionState {
    return this.current;
  }

  /** The transport in use, if connected or connecting. */
  get transport(): Transport | null {
    return this.active;
  }

  /** The position (`epoch:offset`) of the last published event received. */
  get position(): string | undefined {
    return this.lastPosition;
  }

  /** Listens to `event`; returns a function that stops listening. */
  on<E extends EventName>(event: E, handler: Handler<E>): () => void {
    let set = this.handlers.get(event);
    if (!set) {
      set = new Set();
      this.handlers.set(event, set);
    }
    const wrapped = handler as (payload: unknown, meta: Meta) => void;
    set.add(wrapped);
    this.listenSse(event);
    return () => set?.delete(wrapped);
  }

  /** Opens the connection (and keeps it open until `close`). */
  connect(): this {
    if (!this.stopped) return this;
    this.stopped = false;
    this.attempts = 0;
    void this.open();
    return this;
  }

  /** Closes the connection for good. */
  close(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.teardown();
    this.setState("closed", null);
  }

  /** Subscribes to a topic now (WebSocket) and after every reconnect. */
  subscribe(topic: string): void {
    this.topics.add(topic);
    if (this.active === "websocket" && this.ws?.readyState === 1) {
      this.ws.send(JSON.stringify({ type: "subscribe", payload: { topic } }));
    }
  }

  unsubscribe(topic: string): void {
    this.topics.delete(topic);
    if (this.active === "websocket" && this.ws?.readyState === 1) {
      this.ws.send(JSON.stringify({ type: "unsubscribe", payload: { topic } }));
    }
  }

  /** Sends a command (`{type, payload}`) over WebSocket; false when it cannot be sent. */
  send(type: string, payload: unknown = {}): boolean {
    if (this.active !== "websocket" || this.ws?.readyState !== 1) return false;
    this.ws.send(JSON.stringify({ type, payload }));
    return true;
  }

  private emit(event: string, payload: unknown, meta: Meta): void {
    for (const handler of this.handlers.get(event) ?? []) {
      try {
        handler(payload, meta);
      } catch (error) {
        // A failing handler must not stop the others or the connection.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }

  private setState(state: ConnectionState, transport: Transport | null): void {
    if (this.current === state && this.active === transport) return;
    this.current = state;
    this.active = transport;
    this.emit("state", { state, transport }, { event: "state", transport: transport ?? "websocket" });
  }

  /** `auto`: WebSocket, unless its last `fallbackAfter` attempts never opened and SSE
   * exists; every SSE connection that ends gives WebSocket its next chance again. */
  private choose(): Transport {
    const { transport, fallbackAfter } = this.options;
    if (transport !== "auto") return transport;
    const hasWebSocket = this.options.WebSocket ?? (globalThis as { WebSocket?: unknown }).WebSocket;
    const hasEventSource = this.options.EventSource ?? (globalThis as { EventSource?: unknown }).EventSource;
    if (!hasWebSocket) return "sse";
    if (!hasEventSource) return "websocket";
    return this.wsFailures >= fallbackAfter ? "sse" : "websocket";
  }

  private async open(): Promise<void> {
    if (this.stopped) return;
    const transport = this.choose();
    this.setState(this.attempts === 0 ? "connecting" : "reconnecting", transport);
    let token: string;
    try {
      token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
    } catch (error) {
      this.emit("error", { code: "TOKEN_UNAVAILABLE", message: String(error) }, { event: "error", transport });
      this.retry();
      return;
    }
    if (this.stopped) return;
    const query = new URLSearchParams({ token });
    if (this.lastPosition) query.set("since", this.lastPosition);
    if (transport === "websocket") this.openWebSocket(`${this.options.url.replace(/^http/, "ws")}/ws?${query}`);
    else this.openSse(`${this.options.url}/events?${query}`);
  }

  private openWebSocket(url: string): void {
    const Ctor = this.options.WebSocket ?? (globalThis as { WebSocket?: new (url: string) => WebSocketLike }).WebSocket;
    if (!Ctor) return this.retry();
    const ws = new Ctor(url);
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.wsFailures = 0;
    };
    ws.onmessage = (message) => {
      let frame: { type?: string; payload?: unknown; epoch?: string; offset?: number };
      try {
        frame = JSON.parse(String(message.data));
      } catch {
        return;
      }
      if (typeof frame.type !== "string") return;
      const position = frame.epoch !== undefined && frame.offset !== undefined ? `${frame.epoch}:${frame.offset}` : undefined;
      if (frame.type === "connected") {
        this.attempts = 0;
        this.setState("open", "websocket");
        for (const topic of this.topics) {
          const payload: { topic: string; since?: string } = { topic };
          if (this.lastPosition) payload.since = this.lastPosition;
          ws.send(JSON.stringify({ type: "subscribe", payload }));
        }
      }
      if (position) this.lastPosition = position;
      this.emit(frame.type, frame.payload, { event: frame.type, position, transport: "websocket" });
    };
    ws.onerror = () => {};
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (!opened) this.wsFailures += 1;
      if (FINAL_CLOSE.has(event.code)) {
        this.emit("error", { code: "CLOSED", message: event.reason }, { event: "error", transport: "websocket" });
        this.close();
        return;
      }
      this.retry();
    };
  }

  private openSse(url: string): void {
    const Ctor = this.options.EventSource ?? (globalThis as { EventSource?: new (url: string) => EventSourceLike }).EventSource;
    if (!Ctor) return this.retry();
    const sse = new Ctor(url);
    this.sse = sse;
    this.sseNames = new Set();
    for (const name of new Set([...BUILT_IN, ...this.handlers.keys()])) this.listenSse(name);
    sse.onerror = () => {
      // EventSource would retry by itself, without backoff and from its own position:
      // Herald's client does both itself.
      if (this.sse !== sse) return;
      sse.close();
      this.sse = null;
      this.wsFailures = 0;
      this.retry();
    };
  }

  /** Named SSE events need a listener each: one per name the application listens to. */
  private listenSse(name: string): void {
    const sse = this.sse;
    if (!sse || this.sseNames.has(name) || name === "state") return;
    this.sseNames.add(name);
    sse.addEventListener(name, (event) => {
      if (this.sse !== sse) return;
      let payload: unknown;
      try {
        payload = JSON.parse(event.data);
      } catch {
        payload = event.data;
      }
      const position = event.lastEventId && /^[^:]+:\d+$/.test(event.lastEventId) ? event.lastEventId : undefined;
      if (name === "connected") {
        this.attempts = 0;
        this.setState("open", "sse");
      }
      if (position) this.lastPosition = position;
      this.emit(name, payload, { event: name, position, transport: "sse" });
    });
  }

  private teardown(): void {
    const { ws, sse } = this;
    this.ws = null;
    this.sse = null;
    ws?.close(1000, "client closed");
    sse?.close();
  }

  private retry(): void {
    this.teardown();
    if (this.stopped || !this.options.reconnect) {
      this.stopped = true;
      this.setState("closed", null);
      return;
    }
    const { initialMs = 500, maxMs = 15_000, factor = 2, jitter = 0.5 } = this.options.backoff;
    const base = Math.min(maxMs, initialMs * factor ** this.attempts);
    const delay = base * (1 - jitter * Math.random());
    this.attempts += 1;
    this.setState("reconnecting", this.choose());
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.open();
    }, delay);
  }
}

/** `new HeraldClient(options).connect()`. */
export function connect(options: HeraldOptions): HeraldClient {
  return new HeraldClient(options).connect();
}
