//! The replay's HTTP side: one streamed completion request, timed as `vllm bench serve` times
//! it, and one `/metrics` scrape, parsed from Prometheus text. HTTP/1.1 over a fresh TCP
//! connection per request (hyper's client connection), plain http only.
//!
//! Failures come back as [`CallError`], classified so the policy core can decide whether a
//! retry is safe: a completion has no side effects, so anything but a 4xx refusal is retried.

use super::endpoints::{BaseUrl, Kind, Timeouts};
use crate::policy::FailureKind;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};

/// Why a call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// Could not connect (refused, unreachable, connect timeout).
    Connect(String),
    /// Connected, but the first token or the next chunk did not come in time.
    Timeout(String),
    /// The server answered with an error status.
    Http { status: u16, message: String },
    /// The stream broke: closed without `[DONE]`, malformed, or an error event.
    Stream(String),
}

impl CallError {
    pub fn http_status(&self) -> Option<u16> {
        match self {
            CallError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// 4xx other than 408 and 429 are refusals of this request: retrying cannot help. No
    /// connection at all says the engine is unreachable (which counts against its health).
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            CallError::Connect(_) => FailureKind::Unreachable(self.to_string()),
            CallError::Http { status, .. } if (400..500).contains(status) && *status != 408 && *status != 429 => {
                FailureKind::Rejected(self.to_string())
            }
            _ => FailureKind::Transient(self.to_string()),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Connect(m) => write!(f, "connect: {m}"),
            CallError::Timeout(m) => write!(f, "timeout: {m}"),
            CallError::Http { status, message } => write!(f, "HTTP {status}: {message}"),
            CallError::Stream(m) => write!(f, "stream: {m}"),
        }
    }
}

/// What one successful streamed completion looked like from the client.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Streamed {
    /// Nanoseconds from sending to each chunk that carried output (the first is the TTFT).
    pub chunk_ns: Vec<i64>,
    /// Nanoseconds from sending to the last byte.
    pub end_ns: i64,
    /// Output tokens: the usage chunk's completion_tokens, else the token ids streamed, else
    /// the number of content chunks.
    pub output_tokens: u32,
    /// Output tokens each chunk of `chunk_ns` carried (1 each when the server sent no ids).
    pub chunk_tokens: Vec<u32>,
    /// The generated token ids, when the server returned them (vLLM's `return_token_ids`).
    pub output_ids: Vec<u32>,
    /// Prompt tokens as the server counted them (usage), when it said.
    pub prompt_tokens: Option<u32>,
    /// Prompt tokens the server found in its prefix cache (usage.prompt_tokens_details), when it said.
    pub cached_tokens: Option<u32>,
    /// The server's own timings object (llama.cpp sends one in its last chunk).
    pub server_timings: Option<Value>,
}

fn dur(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

async fn connect(
    base: &BaseUrl,
    t: &Timeouts,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, CallError> {
    let addr = base.authority();
    let stream = match timeout(dur(t.connect_s), TcpStream::connect(&addr)).await {
        Err(_) => {
            return Err(CallError::Connect(format!(
                "{}: no connection within {} s",
                base.url, t.connect_s
            )))
        }
        Ok(Err(e)) => return Err(CallError::Connect(format!("{}: {e}", base.url))),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| CallError::Connect(format!("{}: {e}", base.url)))?;
    // The connection task ends with the response body (or with an error the body reports).
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn request(base: &BaseUrl, method: &str, path: &str, api_key: Option<&str>, body: Vec<u8>) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("{}{path}", base.prefix))
        .header("host", base.authority())
        .header("user-agent", concat!("chimera-replay/", env!("CARGO_PKG_VERSION")));
    if !body.is_empty() {
        b = b.header("content-type", "application/json");
    }
    if let Some(k) = api_key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    b.body(Full::new(Bytes::from(body))).expect("a well-formed request")
}

/// Read at most `limit` bytes of a body (error pages), within `deadline`.
async fn read_some(mut body: Incoming, limit: usize, deadline: Instant) -> String {
    let mut buf = Vec::new();
    while buf.len() < limit {
        match timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    buf.extend_from_slice(d);
                }
            }
            _ => break,
        }
    }
    buf.truncate(limit);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The message of an error body: OpenAI's `{"error": {"message": ..}}`, vLLM's `{"message": ..}`,
/// else the text itself.
fn error_message(body: &str) -> String {
    let v: Option<Value> = serde_json::from_str(body).ok();
    let m = v.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("error"))
            .and_then(|m| m.as_str().map(str::to_string))
    });
    let s = m.unwrap_or_else(|| body.trim().to_string());
    if s.len() > 300 {
        format!("{}...", &s[..s.floor_char_boundary(300)])
    } else {
        s
    }
}

/// Send one streamed completion and time it. `t0` is the send instant the timings count from.
pub async fn stream_completion(
    base: &BaseUrl,
    api_key: Option<&str>,
    body: Vec<u8>,
    t: &Timeouts,
    t0: Instant,
) -> Result<Streamed, CallError> {
    let total_deadline = t0 + dur(t.total_s);
    let mut sender = connect(base, t).await?;
    let req = request(base, "POST", "/v1/completions", api_key, body);
    let first_deadline = (t0 + dur(t.first_token_s)).min(total_deadline);
    let resp = match timeout_at(first_deadline, sender.send_request(req)).await {
        Err(_) => {
            return Err(CallError::Timeout(format!(
                "{}: no response headers within {} s",
                base.url, t.first_token_s
            )))
        }
        Ok(Err(e)) => return Err(CallError::Stream(format!("{}: {e}", base.url))),
        Ok(Ok(r)) => r,
    };
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        let text = read_some(resp.into_body(), 4096, Instant::now() + Duration::from_secs(5)).await;
        return Err(CallError::Http {
            status,
            message: error_message(&text),
        });
    }
    let mut body = resp.into_body();
    let mut out = Streamed::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut done = false;
    let mut usage_tokens: Option<u32> = None;
    loop {
        let deadline = if out.chunk_ns.is_empty() {
            first_deadline
        } else {
            (Instant::now() + dur(t.idle_s)).min(total_deadline)
        };
        let frame = match timeout_at(deadline, body.frame()).await {
            Err(_) => {
                let what = if out.chunk_ns.is_empty() {
                    format!("no first token within {} s", t.first_token_s)
                } else {
                    format!("no chunk for {} s after {} chunks", t.idle_s, out.chunk_ns.len())
                };
                return Err(CallError::Timeout(format!("{}: {what}", base.url)));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(CallError::Stream(format!(
                    "{}: connection broke after {} chunks: {e}",
                    base.url,
                    out.chunk_ns.len()
                )))
            }
            Ok(Some(Ok(f))) => f,
        };
        let Some(data) = frame.data_ref() else { continue };
        let at = (Instant::now() - t0).as_nanos() as i64;
        buf.extend_from_slice(data);
        // Events end with a blank line; a chunk may hold several events or part of one.
        while let Some((end, sep)) = find_event_end(&buf) {
            let event: Vec<u8> = buf.drain(..end + sep).collect();
            let text = String::from_utf8_lossy(&event[..end]).into_owned();
            for line in text.lines() {
                let Some(payload) = line.strip_prefix("data:") else {
                    continue;
                };
                let payload = payload.trim();
                if payload == "[DONE]" {
                    done = true;
                    continue;
                }
                let v: Value = serde_json::from_str(payload).map_err(|e| {
                    CallError::Stream(format!(
                        "{}: event is not JSON ({e}): {}",
                        base.url,
                        error_message(payload)
                    ))
                })?;
                if let Some(err) = v.get("error") {
                    return Err(CallError::Stream(format!(
                        "{}: error event: {}",
                        base.url,
                        error_message(&err.to_string())
                    )));
                }
                if let Some(n) = chunk_output(&v, &mut out.output_ids) {
                    out.chunk_ns.push(at);
                    out.chunk_tokens.push(n);
                }
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    if let Some(c) = u["completion_tokens"].as_u64() {
                        usage_tokens = Some(c as u32);
                    }
                    if let Some(p) = u["prompt_tokens"].as_u64() {
                        out.prompt_tokens = Some(p as u32);
                    }
                    if let Some(c) = u
                        .pointer("/prompt_tokens_details/cached_tokens")
                        .and_then(Value::as_u64)
                    {
                        out.cached_tokens = Some(c as u32);
                    }
                }
                if let Some(tm) = v.get("timings").filter(|x| x.is_object()) {
                    out.server_timings = Some(tm.clone());
                }
            }
        }
        out.end_ns = at;
    }
    if !done {
        return Err(CallError::Stream(format!(
            "{}: stream ended without [DONE] after {} chunks",
            base.url,
            out.chunk_ns.len()
        )));
    }
    out.output_tokens = usage_tokens.unwrap_or_else(|| out.chunk_tokens.iter().sum());
    Ok(out)
}

/// The output one streamed completion event carries: None when it carries none (a usage-only
/// or empty final event), else the number of tokens, with their ids appended to `ids` when the
/// server sent them.
///
/// A choice carries output when it has token ids (vLLM with `return_token_ids`; under
/// `--skip-tokenizer-init` its text is always empty), text, llama.cpp's `tokens`, or, with
/// neither ids nor text, no finish reason: vLLM without a tokenizer streams one empty-text
/// event per step, and only a final event of a server that ends with a separate finishing
/// event (llama.cpp) has a finish reason and nothing else.
pub fn chunk_output(v: &Value, ids: &mut Vec<u32>) -> Option<u32> {
    let choices = v["choices"].as_array()?;
    let mut n = 0u32;
    let mut any = false;
    for ch in choices {
        if let Some(t) = ch["token_ids"].as_array() {
            if !t.is_empty() {
                ids.extend(t.iter().filter_map(|x| x.as_u64()).map(|x| x as u32));
                n += t.len() as u32;
                any = true;
            }
            continue;
        }
        let text = ch["text"].as_str();
        if text.is_some_and(|s| !s.is_empty()) || ch["tokens"].is_array() {
            n += 1;
            any = true;
        } else if text.is_some() && ch["finish_reason"].is_null() {
            n += 1;
            any = true;
        }
    }
    any.then_some(n)
}

/// The context length a vLLM server reports for `served_model` in `GET /v1/models`.
pub async fn served_max_model_len(
    base: &BaseUrl,
    served_model: &str,
    api_key: Option<&str>,
    t: &Timeouts,
) -> Result<Option<u32>, CallError> {
    let text = get_text(base, "/v1/models", api_key, t).await?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| CallError::Stream(format!("{}/v1/models: not JSON ({e})", base.url)))?;
    Ok(v["data"].as_array().and_then(|d| {
        d.iter()
            .find(|m| m["id"] == served_model)
            .and_then(|m| m["max_model_len"].as_u64())
            .map(|x| x.min(u32::MAX as u64) as u32)
    }))
}

/// Where the first event in `buf` ends: (index of its end, length of the separator).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// GET a small text resource (`/metrics`, `/health`).
pub async fn get_text(base: &BaseUrl, path: &str, api_key: Option<&str>, t: &Timeouts) -> Result<String, CallError> {
    let deadline = Instant::now() + dur(t.connect_s.max(1.0) * 2.0);
    let mut sender = connect(base, t).await?;
    let resp = match timeout_at(
        deadline,
        sender.send_request(request(base, "GET", path, api_key, Vec::new())),
    )
    .await
    {
        Err(_) => return Err(CallError::Timeout(format!("{}{path}: no answer", base.url))),
        Ok(Err(e)) => return Err(CallError::Stream(format!("{}{path}: {e}", base.url))),
        Ok(Ok(r)) => r,
    };
    let status = resp.status().as_u16();
    let text = read_some(resp.into_body(), 1 << 20, deadline).await;
    if !(200..300).contains(&status) {
        return Err(CallError::Http {
            status,
            message: error_message(&text),
        });
    }
    Ok(text)
}

/// What one /metrics scrape says about a server (None: the server does not export it).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricsSample {
    pub running: Option<f64>,
    pub waiting: Option<f64>,
    /// KV cache in use, 0..1.
    pub kv_usage: Option<f64>,
    pub prompt_tokens_total: Option<f64>,
    pub generation_tokens_total: Option<f64>,
    pub preemptions_total: Option<f64>,
    /// Prompt tokens looked up in the prefix cache, and found there (vLLM's counters).
    #[serde(default)]
    pub prefix_cache_queries_total: Option<f64>,
    #[serde(default)]
    pub prefix_cache_hits_total: Option<f64>,
}

/// Sum of a metric over its label sets (first name found of `names`).
fn metric(text: &str, names: &[&str]) -> Option<f64> {
    for name in names {
        let mut sum = None;
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some(rest) = line.strip_prefix(name) else { continue };
            // The name must end here: a label set or a space follows.
            let rest = if let Some(r) = rest.strip_prefix('{') {
                match r.find('}') {
                    Some(i) => &r[i + 1..],
                    None => continue,
                }
            } else if rest.starts_with(' ') {
                rest
            } else {
                continue;
            };
            if let Some(v) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
                *sum.get_or_insert(0.0) += v;
            }
        }
        if sum.is_some() {
            return sum;
        }
    }
    None
}

/// Parse a scrape by endpoint kind (vLLM's `vllm:` names, llama.cpp's `llamacpp:` names).
pub fn parse_metrics(kind: Kind, text: &str) -> MetricsSample {
    match kind {
        Kind::Vllm => MetricsSample {
            running: metric(text, &["vllm:num_requests_running"]),
            waiting: metric(text, &["vllm:num_requests_waiting"]),
            kv_usage: metric(text, &["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"]),
            prompt_tokens_total: metric(text, &["vllm:prompt_tokens_total"]),
            generation_tokens_total: metric(text, &["vllm:generation_tokens_total"]),
            preemptions_total: metric(text, &["vllm:num_preemptions_total", "vllm:num_preemptions"]),
            prefix_cache_queries_total: metric(text, &["vllm:prefix_cache_queries_total"]),
            prefix_cache_hits_total: metric(text, &["vllm:prefix_cache_hits_total"]),
        },
        Kind::Llamacpp => MetricsSample {
            running: metric(text, &["llamacpp:requests_processing"]),
            waiting: metric(text, &["llamacpp:requests_deferred"]),
            kv_usage: metric(text, &["llamacpp:kv_cache_usage_ratio"]),
            prompt_tokens_total: metric(text, &["llamacpp:prompt_tokens_total"]),
            generation_tokens_total: metric(text, &["llamacpp:tokens_predicted_total"]),
            preemptions_total: None,
            prefix_cache_queries_total: None,
            prefix_cache_hits_total: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_is_summed_over_labels_by_kind() {
        let v = "# HELP vllm:num_requests_running x\n# TYPE vllm:num_requests_running gauge\n\
                 vllm:num_requests_running{model_name=\"a\"} 3.0\nvllm:num_requests_running{model_name=\"b\"} 2\n\
                 vllm:num_requests_running_extra 99\nvllm:gpu_cache_usage_perc{model_name=\"a\"} 0.25\n\
                 vllm:num_preemptions_total{model_name=\"a\"} 7\n";
        let s = parse_metrics(Kind::Vllm, v);
        assert_eq!(s.running, Some(5.0));
        assert_eq!(s.waiting, None);
        assert_eq!(s.kv_usage, Some(0.25));
        assert_eq!(s.preemptions_total, Some(7.0));
        let l = "llamacpp:requests_processing 2\nllamacpp:requests_deferred 1\nllamacpp:tokens_predicted_total 640\n";
        let s = parse_metrics(Kind::Llamacpp, l);
        assert_eq!(
            (s.running, s.waiting, s.generation_tokens_total),
            (Some(2.0), Some(1.0), Some(640.0))
        );
    }

    #[test]
    fn failures_are_classified_for_retry() {
        let cases = [
            (CallError::Connect("refused".into()), true),
            (CallError::Timeout("idle".into()), true),
            (CallError::Stream("no [DONE]".into()), true),
            (
                CallError::Http {
                    status: 500,
                    message: "x".into(),
                },
                true,
            ),
            (
                CallError::Http {
                    status: 503,
                    message: "x".into(),
                },
                true,
            ),
            (
                CallError::Http {
                    status: 429,
                    message: "x".into(),
                },
                true,
            ),
            (
                CallError::Http {
                    status: 400,
                    message: "x".into(),
                },
                false,
            ),
            (
                CallError::Http {
                    status: 404,
                    message: "x".into(),
                },
                false,
            ),
        ];
        for (e, transient) in cases {
            let k = e.failure_kind();
            let retried = matches!(k, FailureKind::Transient(_) | FailureKind::Unreachable(_));
            assert_eq!(retried, transient, "{e}");
            // Only a failure to connect at all counts against the engine's health.
            assert_eq!(
                matches!(k, FailureKind::Unreachable(_)),
                matches!(e, CallError::Connect(_)),
                "{e}"
            );
        }
    }

    /// vLLM 0.32 under --skip-tokenizer-init streams empty text: each event still carries a
    /// token (regression: the replay counted 0 chunks, so TTFT = E2E and TPOT = 0).
    #[test]
    fn chunks_count_tokens_whether_or_not_the_server_detokenizes() {
        let ev = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        let cases: Vec<(&str, Option<u32>, Vec<u32>)> = vec![
            // vLLM, no tokenizer, return_token_ids: empty text, one id (or several, when the
            // output loop fell behind), also on the event that finishes.
            (
                r#"{"choices":[{"index":0,"text":"","finish_reason":null,"prompt_token_ids":[1,2],"token_ids":[7573]}]}"#,
                Some(1),
                vec![7573],
            ),
            (
                r#"{"choices":[{"index":0,"text":"","finish_reason":"length","token_ids":[5,6,7]}]}"#,
                Some(3),
                vec![5, 6, 7],
            ),
            // vLLM, no tokenizer, no ids: empty text, no finish reason yet: one token.
            (
                r#"{"choices":[{"index":0,"text":"","finish_reason":null}]}"#,
                Some(1),
                vec![],
            ),
            // Text, as a server with a tokenizer sends it.
            (
                r#"{"choices":[{"index":0,"text":" tok","finish_reason":null}]}"#,
                Some(1),
                vec![],
            ),
            // llama.cpp's closing event (empty text, a finish reason) and a usage-only event.
            (
                r#"{"choices":[{"index":0,"text":"","finish_reason":"length"}]}"#,
                None,
                vec![],
            ),
            (
                r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":4}}"#,
                None,
                vec![],
            ),
            (
                r#"{"choices":[{"index":0,"text":"","finish_reason":"length","token_ids":[]}]}"#,
                None,
                vec![],
            ),
        ];
        for (text, n, ids) in cases {
            let mut got = Vec::new();
            assert_eq!(chunk_output(&ev(text), &mut got), n, "{text}");
            assert_eq!(got, ids, "{text}");
        }
    }

    #[test]
    fn events_split_on_blank_lines_of_either_kind() {
        assert_eq!(find_event_end(b"data: 1\n\ndata: 2"), Some((7, 2)));
        assert_eq!(find_event_end(b"data: 1\r\n\r\n"), Some((7, 4)));
        assert_eq!(find_event_end(b"data: 1\n"), None);
        assert_eq!(error_message(r#"{"error":{"message":"too long"}}"#), "too long");
        assert_eq!(
            error_message(r#"{"object":"error","message":"bad priority"}"#),
            "bad priority"
        );
    }
}
