//! Free loopback ports and ranges for bridges and relays.
#![allow(dead_code)]

use super::*;

// -------------------------------------------------------------- ports ----

/// Reserves `n` consecutive ports that are free on 127.0.0.1 right now,
/// below the ephemeral range, distinct within this process.
pub fn free_range(n: u16) -> (u16, u16) {
    static NEXT: OnceLock<AtomicU16> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
        let r = rand::random::<u64>() ^ seed;
        AtomicU16::new(20_000 + (r % 11_000) as u16)
    });
    for _ in 0..200 {
        let mut base = next.fetch_add(n + 1, Ordering::Relaxed);
        if base > 31_900 {
            next.store(20_000, Ordering::Relaxed);
            base = next.fetch_add(n + 1, Ordering::Relaxed);
        }
        if (base..base + n).all(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok()) {
            return (base, base + n - 1);
        }
    }
    panic!("no {n} free consecutive ports found in 20000-32000");
}

/// One free port (API, relay).
pub fn free_port() -> u16 {
    free_range(1).0
}
