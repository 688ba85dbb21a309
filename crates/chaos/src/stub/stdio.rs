//! The stub's stdio mode (`mcp-stub --stdio`): newline-delimited JSON-RPC
//! on stdin and stdout, as a stdio MCP server started with `docker run -d
//! -i`. The same answers as over HTTP; and like the SDKs' servers it
//! refuses a second `initialize` in one process, so a bridge that
//! initialises a process twice is caught. Logs go to stderr only.

use bytes::BytesMut;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, LinesCodec, LinesCodecError};

use super::{MAX_BODY_BYTES, StubConfig, codes, error, handle_rpc};

/// The answer to a second `initialize`.
pub const ALREADY_INITIALIZED: &str = "this server process is already initialized";

/// Serves JSON-RPC lines from `input` on `output` until `input` ends. An
/// oversized line gets an error and is skipped up to its newline (the
/// codec is driven by hand: `FramedRead` would end at its first error).
pub async fn serve(
    config: &StubConfig,
    mut input: impl AsyncRead + Unpin,
    mut output: impl AsyncWrite + Unpin,
) -> std::io::Result<()> {
    let mut codec = LinesCodec::new_with_max_length(MAX_BODY_BYTES);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut initialized = false;
    let mut eof = false;
    loop {
        let line = if eof {
            codec.decode_eof(&mut buf)
        } else {
            codec.decode(&mut buf)
        };
        let answer = match line {
            Ok(Some(line)) if line.trim().is_empty() => continue,
            Ok(Some(line)) => {
                super::pause_for(line.as_bytes()).await;
                answer(config, &line, &mut initialized)
            }
            Ok(None) if eof => return Ok(()),
            Ok(None) => {
                eof = input.read_buf(&mut buf).await? == 0;
                continue;
            }
            Err(LinesCodecError::MaxLineLengthExceeded) => Some(error(
                Value::Null,
                codes::INVALID_REQUEST,
                &format!("message longer than {MAX_BODY_BYTES} bytes"),
            )),
            Err(LinesCodecError::Io(e)) => return Err(e),
        };
        if let Some(a) = answer {
            let mut bytes = serde_json::to_vec(&a).unwrap_or_default();
            bytes.push(b'\n');
            output.write_all(&bytes).await?;
            output.flush().await?;
        }
    }
}

fn answer(config: &StubConfig, line: &str, initialized: &mut bool) -> Option<Value> {
    let msg: Option<Value> = serde_json::from_str(line).ok();
    let is_init = msg
        .as_ref()
        .and_then(|m| m.get("method"))
        .and_then(Value::as_str)
        == Some("initialize");
    if is_init && *initialized {
        let id = msg
            .and_then(|m| m.get("id").cloned())
            .unwrap_or(Value::Null);
        return Some(error(id, codes::INVALID_REQUEST, ALREADY_INITIALIZED));
    }
    let out = handle_rpc(config, line.as_bytes());
    if is_init && out.as_ref().is_some_and(|o| o.get("result").is_some()) {
        *initialized = true;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn conversation(input: &str) -> Vec<Value> {
        let mut out = Vec::new();
        serve(&StubConfig::named("s"), input.as_bytes(), &mut out)
            .await
            .unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn answers_line_by_line_and_refuses_a_second_initialize() {
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}});
        let call = json!({"jsonrpc": "2.0", "id": "c", "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "hi"}}});
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let input = format!(
            "{init}\n\n{note}\n{call}\n{}\n",
            json!({"jsonrpc": "2.0", "id": 2, "method": "initialize"})
        );
        let got = conversation(&input).await;
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0]["result"]["serverInfo"]["name"], "s");
        assert_eq!(got[1]["id"], "c");
        assert_eq!(got[1]["result"]["content"][0]["text"], "hi");
        assert_eq!(got[2]["id"], 2);
        assert_eq!(got[2]["error"]["message"], ALREADY_INITIALIZED);
    }

    #[tokio::test]
    async fn an_oversized_line_gets_an_error_and_the_next_is_read() {
        let big = "x".repeat(MAX_BODY_BYTES + 10);
        let input = format!(
            "{big}\n{}\n",
            json!({"jsonrpc": "2.0", "id": 3, "method": "ping"})
        );
        let got = conversation(&input).await;
        assert_eq!(got[0]["error"]["code"], codes::INVALID_REQUEST);
        assert_eq!(got[1]["id"], 3);
        assert_eq!(got[1]["result"], json!({}));
    }
}
