// A React hook in the spirit of seed 000's `useNotifications(token)`: one Herald client
// per token, the notifications received (newest first), the unread count and the
// connection state.
import { useEffect, useRef, useState } from "react";

import { type ConnectionState, HeraldClient, type HeraldOptions } from "./index.js";

export interface UseNotificationsOptions extends Omit<HeraldOptions, "token"> {
  /** Most notifications kept in state (100). */
  max?: number;
}

export interface NotificationsState {
  client: HeraldClient | null;
  /** `notification` and `notification:new` payloads, newest first. */
  notifications: unknown[];
  /** The last `notification:unread-count`, or null before the first. */
  unreadCount: number | null;
  state: ConnectionState;
  connected: boolean;
}

/** Connects while `token` is set; reconnects when the token or URL changes. */
export function useNotifications(token: string | null | undefined, options: UseNotificationsOptions): NotificationsState {
  const [client, setClient] = useState<HeraldClient | null>(null);
  const [notifications, setNotifications] = useState<unknown[]>([]);
  const [unreadCount, setUnreadCount] = useState<number | null>(null);
  const [state, setState] = useState<ConnectionState>("idle");
  const latest = useRef(options);
  latest.current = options;

  useEffect(() => {
    if (!token) return undefined;
    const { max = 100, ...rest } = latest.current;
    const herald = new HeraldClient({ ...rest, token });
    const add = (notification: unknown) => setNotifications((previous) => [notification, ...previous].slice(0, max));
    herald.on("notification", add);
    herald.on("notification:new", add);
    herald.on("notification:unread-count", ({ count }) => setUnreadCount(count));
    herald.on("state", ({ state }) => setState(state));
    herald.connect();
    setClient(herald);
    return () => {
      herald.close();
      setClient(null);
    };
  }, [token, options.url]);

  return { client, notifications, unreadCount, state, connected: state === "open" };
}
