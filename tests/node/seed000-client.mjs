// Seed 000 (Streamix notify-wss) "Client Integration" code, unchanged except for the
// server URL, which the test passes in. The harness below only reports what the class
// does and calls its methods; it does not alter the class.
import { io } from 'socket.io-client';
import readline from 'node:readline';

const SERVER_URL = process.env.HERALD_URL;
const out = (record) => process.stdout.write(JSON.stringify(record) + '\n');
console.log = (...args) => out({ kind: 'log', args });
console.error = (...args) => out({ kind: 'log-error', args: args.map((a) => (a && a.message) ? { message: a.message, code: a.code } : a) });

// ---- seed 000 code (io('http://localhost:8080', ...) → io(SERVER_URL, ...)) ----
class NotificationClient {
  constructor(token) {
    this.socket = io(SERVER_URL, {
      auth: { token }
    });
    
    this.setupEventListeners();
  }
  
  setupEventListeners() {
    this.socket.on('connect', () => {
      console.log('Connected to notification server');
    });
    
    this.socket.on('notification', (notification) => {
      this.handleNotification(notification);
    });
    
    this.socket.on('error', (error) => {
      console.error('WebSocket error:', error);
    });
  }
  
  handleNotification(notification) {
    // Handle the notification
    console.log('New notification:', notification);
  }
  
  joinChannel(channelId) {
    this.socket.emit('join_channel', { channelId });
  }
  
  subscribeToUser(userId) {
    this.socket.emit('subscribe_user', { userId });
  }
}
// ---- end of seed 000 code ----

const client = new NotificationClient(process.env.TOKEN);
client.socket.io.reconnection(false);
client.socket.on('connect_error', (error) => out({ kind: 'connect_error', message: error.message }));
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const command = JSON.parse(line);
  if (command.joinChannel) client.joinChannel(command.joinChannel);
  if (command.subscribeToUser) client.subscribeToUser(command.subscribeToUser);
}).on('close', () => process.exit(0));
