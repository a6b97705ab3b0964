//! Helpers for tests and the demo: fake HTTP peers on loopback.
