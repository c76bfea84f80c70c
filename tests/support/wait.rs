//! Waiting in tests: for a condition, for a port to listen, for a whole
//! scenario; and a free port to listen on.

use std::net::TcpListener;
use std::time::{Duration, Instant};

/// Whether `pred` comes to hold within `secs` (checked every 20 ms).
pub async fn holds_within(secs: u64, mut pred: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !pred() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Waits until `pred` holds, checking every 20 ms, for `secs` at most.
pub async fn eventually(what: &str, secs: u64, pred: impl FnMut() -> bool) {
    assert!(
        holds_within(secs, pred).await,
        "timed out after {secs} s waiting for {what}"
    );
}

/// Bounds a whole scenario.
pub async fn within<T>(secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("scenario timed out")
}

/// A port that was free a moment ago (the socket is dropped before returning):
/// also serves as the address of an upstream that is down.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on 127.0.0.1:`port` (15 s at
/// most); fails if `child`, which should be listening there, exits first.
pub async fn wait_listening(port: u16, what: &str, child: &mut tokio::process::Child) {
    if let Err(e) = listening(port, child).await {
        panic!("{what}: {e}");
    }
}

/// `wait_listening` that says what went wrong instead of failing.
pub async fn listening(port: u16, child: &mut tokio::process::Child) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("exited before listening on port {port}: {status}"));
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("not listening on 127.0.0.1:{port} after 15 s"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
