//! Helpers for the tests that run the bridge binary without Docker: a guard
//! that kills the process, and free loopback ports.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::TcpListener;
use std::process::Child;

/// Kills and reaps the bridge process when dropped, even on panic.
pub struct Bridge(pub Child);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
