//! What the bridge reads of an MCP request, and the one thing it rewrites
//! in it: the session it names (the `Mcp-Session-Id` header, or the `sse`
//! transport's query parameter) and the JSON-RPC methods of its body, as
//! bounded labels for `mcp_requests_total{method}`.

use hyper::Uri;
use hyper::header::HeaderName;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::contract::mcp::SESSION_PARAMS;
use crate::contract::metric::mcp_method;

/// [`crate::contract::mcp::SESSION_HEADER`], parsed once: a name given as a
/// `&str` is parsed again on every lookup.
pub static SESSION_HEADER: HeaderName =
    HeaderName::from_static(crate::contract::mcp::SESSION_HEADER);

/// The session a request names, and whether it came in the query.
pub(crate) fn session_of(parts: &hyper::http::request::Parts) -> Option<(String, bool)> {
    if let Some(v) = parts.headers.get(&SESSION_HEADER) {
        let id = match v.to_str() {
            Ok(id) => id.to_owned(),
            Err(_) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        };
        return Some((id, false));
    }
    let query = parts.uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        // As the endpoint event's rewrite: the first non-empty one.
        .find(|(k, v)| !v.is_empty() && SESSION_PARAMS.contains(&k.as_ref()))
        .map(|(_, v)| (v.into_owned(), true))
}

/// The URI with its session query parameters (each of them, whichever one
/// the replica reads) set to the replica's own id; `None` when that is no
/// request target: re-encoded, a query near the URI length limit (64 KiB)
/// can outgrow it, as can many empty session parameters filled in.
pub(crate) fn with_session_param(uri: &Uri, id: &str) -> Option<Uri> {
    let query = uri.query().unwrap_or("");
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if SESSION_PARAMS.contains(&k.as_ref()) {
            out.append_pair(&k, id);
        } else {
            out.append_pair(&k, &v);
        }
    }
    let pq = format!("{}?{}", uri.path(), out.finish());
    Uri::try_from(pq).ok()
}

/// Calls `f` with each JSON-RPC method of a POST body (one message or a
/// batch), as bounded label values; a body that is not JSON-RPC has none.
///
/// One message is read only up to its method: the `params` after it (the
/// MCP SDKs write `method` first), most of a large `tools/call`, are left
/// to the replica, so the count costs the same whatever the arguments'
/// size (in P7 it went from 2,671 to 1,568 instructions per request).
/// A message malformed after its method is counted by that method; the
/// replica answers it with its parse error. A batch is read whole, and
/// counted only when it is valid JSON.
pub(crate) fn each_method(body: &[u8], mut f: impl FnMut(&'static str)) {
    let mut de = serde_json::Deserializer::from_slice(body);
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {
            let mut method = None;
            // Stopping at the method leaves the rest unread, which the
            // parser reports as an error; what was read is kept.
            let _ = Method {
                found: &mut method,
                whole: false,
            }
            .deserialize(&mut de);
            if let Some(m) = method {
                f(m);
            }
        }
        Some(b'[') => {
            let batch = (&mut de).deserialize_seq(Batch(Vec::new()));
            if let Ok(batch) = batch
                && de.end().is_ok()
            {
                batch.into_iter().for_each(f);
            }
        }
        _ => {}
    }
}

/// Most methods of one batch counted.
const MAX_BATCH_COUNTED: usize = 1000;

/// The method of one message, from its keys in order: [`mcp_method::OTHER`]
/// for a message without one (an answer) or with a `null` one. `whole`
/// reads past the method to the message's end, as a batch needs; otherwise
/// reading stops at the method.
struct Method<'a> {
    found: &'a mut Option<&'static str>,
    whole: bool,
}

impl<'de> DeserializeSeed<'de> for Method<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Method<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON-RPC message")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut method = None;
        while let Some(IsMethod(is)) = map.next_key()? {
            if is && method.is_none() {
                let m: Option<Label> = map.next_value()?;
                method = Some(m.map_or(mcp_method::OTHER, |l| l.0));
                if !self.whole {
                    break;
                }
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        *self.found = Some(method.unwrap_or(mcp_method::OTHER));
        Ok(())
    }
}

/// The methods of a batch, each message read whole.
struct Batch(Vec<&'static str>);

impl<'de> Visitor<'de> for Batch {
    type Value = Vec<&'static str>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a batch of JSON-RPC messages")
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Self::Value, A::Error> {
        loop {
            let mut found = None;
            let seed = Method {
                found: &mut found,
                whole: true,
            };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(self.0);
            }
            if let Some(m) = found
                && self.0.len() < MAX_BATCH_COUNTED
            {
                self.0.push(m);
            }
        }
    }
}

/// Whether a message's key is `method` (escaped or not).
struct IsMethod(bool);

impl<'de> Deserialize<'de> for IsMethod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read_str(d, "a key", |k| IsMethod(k == "method"))
    }
}

/// A method name read straight into its label (`#[serde(borrow)]` does not
/// reach into an `Option`, so a `Cow` field was an allocation per request).
struct Label(&'static str);

impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read_str(d, "a method name", |m| Label(mcp_method::label(Some(m))))
    }
}

/// `read` of a JSON string, with no copy of it, escaped or not; `what` is
/// what the error says was expected.
fn read_str<'de, D: Deserializer<'de>, T>(
    d: D,
    what: &'static str,
    read: fn(&str) -> T,
) -> Result<T, D::Error> {
    struct Text<T>(&'static str, fn(&str) -> T);
    impl<T> Visitor<'_> for Text<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            Ok((self.1)(v))
        }
    }
    d.deserialize_str(Text(what, read))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn methods(body: &[u8]) -> Vec<&'static str> {
        let mut all = Vec::new();
        each_method(body, |m| all.push(m));
        all
    }

    #[test]
    fn methods_are_bounded_labels() {
        assert_eq!(
            methods(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#),
            ["tools/call"]
        );
        assert_eq!(
            methods(br#"[{"method":"ping"},{"method":"x/evil"},{"result":{}}]"#),
            ["ping", "other", "other"]
        );
        assert_eq!(
            methods(br#"{"method":"tools\/call","id":1}"#),
            ["tools/call"],
            "an escaped name is read as the name"
        );
        assert_eq!(methods(br#"{"method":null,"id":1}"#), ["other"]);
        assert!(
            methods(br#"{"method":5}"#).is_empty(),
            "no JSON-RPC message"
        );
        assert!(methods(b"not json").is_empty());
        assert!(methods(b"3").is_empty());
    }

    #[test]
    fn a_message_is_read_up_to_its_method_and_a_batch_whole() {
        assert_eq!(
            methods(br#"{"id":1,"method":"tools/call","params":{"text":"#),
            ["tools/call"],
            "what follows the method is the replica's to judge"
        );
        assert!(
            methods(br#"{"id":1,,"method":"ping"}"#).is_empty(),
            "malformed before its method: no message"
        );
        assert_eq!(
            methods(br#"{"id":1,"result":{"method":"ping"}}"#),
            ["other"],
            "an answer, whatever its result holds"
        );
        assert_eq!(methods(br#"{"\u006dethod":"ping"}"#), ["ping"]);
        assert_eq!(
            methods(br#"{"params":{"method":"x"},"method":"ping"}"#),
            ["ping"],
            "only the message's own key"
        );
        assert!(
            methods(br#"[{"method":"ping"},{"method":"#).is_empty(),
            "a batch counts only once valid"
        );
        assert!(methods(br#"[{"method":"ping"}] x"#).is_empty());
        let batch = format!("[{}{{}}]", r#"{"method":"ping"},"#.repeat(1500));
        assert_eq!(methods(batch.as_bytes()).len(), MAX_BATCH_COUNTED);
    }

    #[test]
    fn the_session_parameter_is_replaced_and_the_rest_kept() {
        let uri: Uri = "/messages/?a=1&session_id=0123456789ab.xyz"
            .parse()
            .unwrap();
        assert_eq!(
            with_session_param(&uri, "xyz").map(|u| u.to_string()),
            Some("/messages/?a=1&session_id=xyz".to_string())
        );
    }

    #[test]
    fn a_target_too_long_once_rewritten_is_none_not_the_clients() {
        // 5,000 empty session parameters, each filled in with a 20-byte id:
        // over the URI length limit, which the client's target is not.
        let query = "session_id=&".repeat(5_000);
        let uri: Uri = format!("/messages/?{query}session_id=0123456789ab.x")
            .parse()
            .unwrap();
        assert_eq!(with_session_param(&uri, &"y".repeat(20)), None);
    }
}
