//! The one way the harness, the tests and xtask wait for something: poll a
//! check with a deadline (never a bare sleep as synchronisation).
//!
//! A check returns `Ok(value)` when what it waits for holds, and `Err(why
//! not)` otherwise; on the deadline the error names what was awaited, how
//! long, and the last reason, so a failed wait says what was seen.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a check runs unless a caller says otherwise.
pub const EVERY: Duration = Duration::from_millis(25);

/// A wait that ran out of time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("timed out after {waited:?} waiting for {what}; last: {last}")]
pub struct TimedOut {
    /// What was awaited.
    pub what: String,
    /// The limit that passed.
    pub waited: Duration,
    /// The check's last answer.
    pub last: String,
}

/// Runs `check` every `every` until it returns `Ok`, or until `timeout`
/// has passed (the check runs at least once).
pub fn until_every<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, TimedOut> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(last) if Instant::now() >= deadline => {
                return Err(TimedOut {
                    what: what.to_string(),
                    waited: timeout,
                    last,
                });
            }
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// [`until_every`] at the default pace [`EVERY`].
pub fn until<T>(
    what: &str,
    timeout: Duration,
    check: impl FnMut() -> Result<T, String>,
) -> Result<T, TimedOut> {
    until_every(what, timeout, EVERY, check)
}

/// The async form of [`until_every`]: awaits `check()` every `every`.
pub async fn until_every_async<T, F>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> F,
) -> Result<T, TimedOut>
where
    F: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(last) if Instant::now() >= deadline => {
                return Err(TimedOut {
                    what: what.to_string(),
                    waited: timeout,
                    last,
                });
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// [`until_every_async`] at the default pace [`EVERY`].
pub async fn until_async<T, F>(
    what: &str,
    timeout: Duration,
    check: impl FnMut() -> F,
) -> Result<T, TimedOut>
where
    F: Future<Output = Result<T, String>>,
{
    until_every_async(what, timeout, EVERY, check).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_ok_and_times_out_naming_the_last_reason() {
        let mut n = 0;
        let got = until("the third try", Duration::from_secs(5), || {
            n += 1;
            if n == 3 {
                Ok(n)
            } else {
                Err(format!("try {n}"))
            }
        });
        assert_eq!(got.unwrap(), 3);

        let err = until_every(
            "never",
            Duration::from_millis(30),
            Duration::from_millis(5),
            || Err::<(), _>("still no".to_string()),
        )
        .unwrap_err();
        assert_eq!(err.last, "still no");
        assert!(err.to_string().contains("waiting for never"), "{err}");
    }

    #[tokio::test]
    async fn the_async_form_polls_until_ok() {
        let mut n = 0;
        let got = until_async("two tries", Duration::from_secs(5), || {
            n += 1;
            let k = n;
            async move {
                if k == 2 {
                    Ok(k)
                } else {
                    Err("one".to_string())
                }
            }
        })
        .await;
        assert_eq!(got.unwrap(), 2);
        let err = until_every_async(
            "never",
            Duration::from_millis(30),
            Duration::from_millis(5),
            || async { Err::<(), _>("no".to_string()) },
        )
        .await
        .unwrap_err();
        assert_eq!(err.last, "no");
    }
}
