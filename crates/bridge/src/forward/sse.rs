//! The `sse` transport's (MCP 2024-11-05) `endpoint` event, rewritten in
//! flight: the URL it names carries the session (`?session_id=S`), which
//! becomes the id that names the replica too ([`super::sessions::encode`]),
//! so the client's POSTs to it come back to the replica holding the stream.
//!
//! The response body is passed through frame by frame; only until the first
//! `endpoint` event (at most [`SCAN_LIMIT`] bytes) is it held back and
//! scanned. A stream without such an event (a streamable-HTTP GET stream) is
//! released unchanged once the limit passes or the first event ends without
//! one.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};

use super::ServiceCtx;
use super::http::Body;
use super::sessions;

/// Most bytes held back while looking for the `endpoint` event.
pub const SCAN_LIMIT: usize = 16 * 1024;

/// Rewrites the `endpoint` event of one stream from the replica `key`.
pub(super) struct EndpointRewrite {
    key: Arc<str>,
    ctx: ServiceCtx,
}

impl EndpointRewrite {
    pub(super) fn new(key: Arc<str>, ctx: ServiceCtx) -> Self {
        Self { key, ctx }
    }

    /// The body with the rewrite applied.
    pub(super) fn wrap(self, inner: Incoming) -> Body {
        Rewriting {
            inner,
            st: self,
            buf: Vec::new(),
            done: false,
            pending: None,
            session: None,
        }
        .boxed()
    }

    /// Scans the held-back bytes; records the session the event names
    /// (and returns its id: the session lives as long as this stream).
    fn scan(&self, buf: &[u8]) -> (Scan, Option<String>) {
        let (scan, session) = scan(buf, &self.key);
        if let Some(mine) = &session {
            self.ctx
                .sessions()
                .touch(mine, &self.key, tokio::time::Instant::now());
            self.ctx.publish_sessions();
        }
        (scan, session)
    }
}

/// What scanning the held-back bytes found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// Not a whole event yet.
    More,
    /// Release these bytes and stop scanning.
    Release(Vec<u8>),
}

/// Looks at the first whole event of `buf`: an `endpoint` event gets the
/// session in its URL encoded for the replica `key` (returned too); any
/// other event releases the bytes as they are.
pub(crate) fn scan(buf: &[u8], key: &str) -> (Scan, Option<String>) {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    let Some((end, sep)) = [lf, crlf].into_iter().flatten().min() else {
        return (Scan::More, None);
    };
    let event = String::from_utf8_lossy(&buf[..end]);
    let lines: Vec<&str> = event.lines().map(|l| l.trim_end_matches('\r')).collect();
    let is_endpoint = lines.iter().any(|l| {
        l.strip_prefix("event:")
            .is_some_and(|v| v.trim() == "endpoint")
    });
    if !is_endpoint {
        return (Scan::Release(buf.to_vec()), None);
    }
    let mut session = None;
    let mut out = String::new();
    for l in lines {
        let rewritten = l
            .strip_prefix("data:")
            .filter(|_| session.is_none())
            .and_then(|data| rewrite_url(data.trim(), key));
        match rewritten {
            Some((url, mine)) => {
                out.push_str("data: ");
                out.push_str(&url);
                session = Some(mine);
            }
            None => out.push_str(l),
        }
        out.push('\n');
    }
    out.push('\n');
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&buf[end + sep..]);
    (Scan::Release(bytes), session)
}

/// The endpoint URL with its session parameter encoded for `key`, and that
/// session's client id; `None` when the URL names no session (or an empty
/// one, which [`sessions::decode`] could never route back).
pub(crate) fn rewrite_url(url: &str, key: &str) -> Option<(String, String)> {
    // A `?` after the `#` is the fragment's, not the query's.
    let (url, fragment) = match url.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (url, None),
    };
    let (base, query) = url.split_once('?')?;
    let mut found = None;
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        // An empty id names no session (and could not be routed back).
        if found.is_none()
            && !v.is_empty()
            && crate::contract::mcp::SESSION_PARAMS.contains(&k.as_ref())
        {
            let mine = sessions::encode(key, &v);
            out.append_pair(&k, &mine);
            found = Some(mine);
        } else {
            out.append_pair(&k, &v);
        }
    }
    let mine = found?;
    let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
    Some((format!("{base}?{}{fragment}", out.finish()), mine))
}

struct Rewriting {
    inner: Incoming,
    st: EndpointRewrite,
    buf: Vec<u8>,
    done: bool,
    /// A non-data frame (trailers) that came while bytes were held back.
    pending: Option<Frame<Bytes>>,
    /// The session the stream's `endpoint` event named: it ends with the
    /// stream (the transport's rule), so it is no longer counted then.
    session: Option<String>,
}

impl Drop for Rewriting {
    fn drop(&mut self) {
        if let Some(id) = self.session.take() {
            self.st.ctx.sessions().end(&id);
            self.st.ctx.publish_sessions();
        }
    }
}

impl hyper::body::Body for Rewriting {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(f) = this.pending.take() {
            return Poll::Ready(Some(Ok(f)));
        }
        if this.done {
            return Pin::new(&mut this.inner).poll_frame(cx);
        }
        loop {
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => {
                    this.done = true;
                    let rest = std::mem::take(&mut this.buf);
                    return Poll::Ready((!rest.is_empty()).then(|| Ok(Frame::data(rest.into()))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.buf.extend_from_slice(&data);
                        let (scan, session) = this.st.scan(&this.buf);
                        if session.is_some() {
                            this.session = session;
                        }
                        let release = match scan {
                            Scan::Release(out) => Some(out),
                            Scan::More if this.buf.len() > SCAN_LIMIT => {
                                Some(std::mem::take(&mut this.buf))
                            }
                            Scan::More => None,
                        };
                        if let Some(out) = release {
                            this.done = true;
                            this.buf = Vec::new();
                            return Poll::Ready(Some(Ok(Frame::data(out.into()))));
                        }
                    }
                    Err(frame) => {
                        this.done = true;
                        let held = std::mem::take(&mut this.buf);
                        if held.is_empty() {
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        this.pending = Some(frame);
                        return Poll::Ready(Some(Ok(Frame::data(held.into()))));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.buf.is_empty() && self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789ab";

    #[test]
    fn the_endpoint_event_names_the_replica_and_the_rest_is_kept() {
        let raw = b"event: endpoint\r\ndata: /messages/?session_id=abc123\r\n\r\nevent: message\ndata: {\"x\":1}\n\n";
        let (scan, session) = scan(raw, KEY);
        assert_eq!(session.as_deref(), Some("0123456789ab.abc123"));
        let Scan::Release(out) = scan else {
            panic!("released")
        };
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with("event: endpoint\ndata: /messages/?session_id=0123456789ab.abc123\n\n"),
            "{out}"
        );
        assert!(
            out.ends_with("event: message\ndata: {\"x\":1}\n\n"),
            "{out}"
        );
    }

    #[test]
    fn other_streams_pass_unchanged_and_halves_wait() {
        let raw = b"event: message\ndata: {}\n\n";
        assert_eq!(scan(raw, KEY), (Scan::Release(raw.to_vec()), None));
        assert_eq!(
            scan(b"event: endpoint\ndata: /m?session_id=1", KEY),
            (Scan::More, None)
        );
        // An endpoint without a session parameter is left as it is.
        let (Scan::Release(out), None) = scan(b"event: endpoint\ndata: /m\n\n", KEY) else {
            panic!("released without a session")
        };
        assert_eq!(out, b"event: endpoint\ndata: /m\n\n");
    }
}
