//! WebSocket throttling (in progress).
