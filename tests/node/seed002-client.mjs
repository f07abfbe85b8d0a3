// Seed 002 (GhostPay) "Client Implementation Guidelines" code, unchanged except for the
// server URL and token, which the test passes in, and console output reported as JSON.
import { io } from 'socket.io-client';
import readline from 'node:readline';

const out = (record) => process.stdout.write(JSON.stringify(record) + '\n');
console.log = (...args) => out({ kind: 'log', args });
console.error = (...args) => out({ kind: 'log-error', args });
const jwtToken = process.env.TOKEN;
const showNotificationAlert = (notification) => out({ kind: 'alert', notification });
const updateNotificationBadge = (count) => out({ kind: 'badge', count });

// ---- seed 002 code ("https://api.ghostpay.com" → HERALD_URL) ----
// Connect to the notification WebSocket
const socket = io(process.env.HERALD_URL + "/notifications", {
  extraHeaders: {
    Authorization: `Bearer ${jwtToken}`,
  },
});

// Alternative: Use query parameter for token
// const socket = io('https://api.ghostpay.com/notifications?token=YOUR_JWT_TOKEN');

// Handle connection events
socket.on("connect", () => {
  console.log("Connected to notification system");
  // Subscribe to notifications
  socket.emit("subscribe_notifications", {}, (response) => {
    if (response.success) {
      console.log("Successfully subscribed to notifications");
    }
  });
});

// Handle disconnection
socket.on("disconnect", () => {
  console.log("Disconnected from notification system");
});

// Listen for new notifications
socket.on("notification", (notification) => {
  console.log("New notification received:", notification);
  // Update UI or show notification to user
  if (notification.isNew) {
    showNotificationAlert(notification);
  }
});

// Listen for unread count updates
socket.on("unread_count", (data) => {
  console.log("Unread count updated:", data.count);
  // Update badge or counter in UI
  updateNotificationBadge(data.count);
});

// Handle ping messages to keep connection alive
socket.on("ping", () => {
  console.log("Ping received from server");
});
// ---- end of seed 002 code ----

socket.io.reconnection(false);
socket.on('connect_error', (error) => out({ kind: 'connect_error', message: error.message }));
readline.createInterface({ input: process.stdin }).on('line', () => {}).on('close', () => process.exit(0));
