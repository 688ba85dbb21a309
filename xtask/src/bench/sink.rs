//! The P4 target: a tiny TCP server run inside a stub container's network
//! namespace (`nsenter -t PID -n`), so direct, docker-proxy and mesh paths all
//! reach the same process over the container's veth.
//!
//! Protocol: the client's first byte picks the mode.
//! - `S` (sink): read to EOF, then answer the byte count (u64, big endian).
//! - `E` (echo): write back whatever arrives, until EOF.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

const BUF: usize = 256 * 1024;

/// Serves until killed.
pub fn serve(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || {
            let _ = handle(conn);
        });
    }
    Ok(())
}

fn handle(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut mode = [0u8; 1];
    s.read_exact(&mut mode)?;
    let mut buf = vec![0u8; BUF];
    match mode[0] {
        b'S' => {
            let mut total: u64 = 0;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            s.write_all(&total.to_be_bytes())?;
        }
        b'E' => loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n])?;
        },
        _ => {}
    }
    let _ = s.shutdown(Shutdown::Both);
    Ok(())
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("connect {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.set_write_timeout(Some(Duration::from_secs(60)))?;
    Ok(s)
}

/// Waits until `addr` answers an echo.
pub fn wait_echo(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let echo = || -> Result<()> {
        let mut s = connect(addr)?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        s.write_all(b"Eping")?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b)?;
        ensure!(&b == b"ping", "bad echo");
        Ok(())
    };
    let what = format!("{addr} to echo");
    let every = Duration::from_millis(20);
    mesh_chaos::wait::until_every(&what, timeout, every, || {
        echo().map_err(|e| format!("{e:#}"))
    })?;
    Ok(())
}

/// Sends `bytes` to the sink at `addr`; returns MiB/s (connect to the sink's
/// count, so every byte was received).
pub fn upload(addr: SocketAddr, bytes: u64) -> Result<f64> {
    let buf = vec![0x5au8; BUF];
    let t = Instant::now();
    let mut s = connect(addr)?;
    s.write_all(b"S")?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(BUF as u64) as usize;
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count)?;
    let secs = t.elapsed().as_secs_f64();
    let got = u64::from_be_bytes(count);
    if got != bytes {
        bail!("the sink at {addr} counted {got} bytes of {bytes}");
    }
    Ok(bytes as f64 / (1024.0 * 1024.0) / secs)
}

/// `n` round trips of `size` bytes on one connection (after `warm` unmeasured
/// ones); returns each round trip in microseconds.
pub fn ping_pong(addr: SocketAddr, size: usize, warm: usize, n: usize) -> Result<Vec<f64>> {
    let mut s = connect(addr)?;
    s.write_all(b"E")?;
    let msg = vec![0x42u8; size];
    let mut back = vec![0u8; size];
    let mut out = Vec::with_capacity(n);
    for i in 0..warm + n {
        let t = Instant::now();
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
        if i >= warm {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(out)
}
