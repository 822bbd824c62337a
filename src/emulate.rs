//! `chimera emulate` (feature `live`): an HTTP server speaking the OpenAI completions API and
//! vLLM's `/metrics` names, whose timing is the simulator's engine model (one vLLM v1 replica
//! with its step-time model) running in real time. Users test gateways and replay set-ups
//! without a GPU; tests use it as an endpoint.
//!
//! The engine is the same `engine::Engine` the simulator drives: a request is added when it
//! arrives, a step is scheduled whenever the engine has work, the task sleeps for the step's
//! modelled duration, ends the step at its planned end, and streams each request's new tokens.
//! The output text is placeholder tokens (" tok"): lengths and timing are what is emulated.
//! Prompts given as text count one token per 4 bytes (at least 1); token-id prompts count ids.

use crate::engine::{Engine, NewRequest};
use crate::error::{Error, Result};
use crate::scenario::ResolvedEngine;
use crate::time::Nanos;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

/// What happens to a request, as the engine loop tells its handler.
enum Ev {
    Tokens(u32),
    Done(u32),
}

#[derive(Default)]
struct Counters {
    prompt_tokens: u64,
    generation_tokens: u64,
    finished: u64,
    preemptions: u64,
    steps: u64,
    step_tokens: u64,
}

struct Inner {
    engine: Engine,
    streams: HashMap<u64, (mpsc::UnboundedSender<Ev>, u32)>,
    next_id: u64,
    counters: Counters,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Signalled (with `inner` locked) when a request arrives.
    wake: Condvar,
    start: Instant,
    model: String,
    max_model_len: u32,
    usable_blocks: u32,
    block_size: u32,
    /// Whether the engine orders by `priority` (any policy but fcfs).
    priorities: bool,
}

impl Shared {
    fn now(&self) -> Nanos {
        self.start.elapsed().as_nanos() as Nanos
    }
}

/// The engine loop, on its own OS thread (tokio's timers tick in whole milliseconds, a fifth
/// of a small model's decode step): schedule a step when there is work, sleep until its
/// modelled end, end it there and hand out the tokens it produced. A busy engine starts its
/// next step at the previous step's planned end, as in the simulator, so the lateness of one
/// wake-up does not accumulate.
fn engine_loop(sh: Arc<Shared>) {
    let mut busy_until: Option<Nanos> = None;
    loop {
        let (start, dur) = {
            let mut g = sh.inner.lock().expect("emulator state");
            loop {
                if g.engine.has_work() {
                    let start = busy_until.unwrap_or_else(|| sh.now());
                    if let Some(d) = g.engine.begin_step(start) {
                        break (start, d);
                    }
                }
                busy_until = None;
                g = sh.wake.wait(g).expect("emulator state");
            }
        };
        let end = start + dur;
        let wait = end - sh.now();
        if wait > 0 {
            std::thread::sleep(std::time::Duration::from_nanos(wait as u64));
        }
        let mut g = sh.inner.lock().expect("emulator state");
        let mut fin = Vec::new();
        let rep = g.engine.end_step(end, &mut fin);
        // Back to back only while the engine keeps up with the clock; after a long stall
        // (more than a step behind) it restarts from now.
        busy_until = (sh.now() - end < dur.max(1_000_000)).then_some(end);
        g.counters.steps += 1;
        g.counters.step_tokens += rep.tokens as u64;
        g.counters.preemptions += rep.preempted as u64;
        let progress: Vec<(u64, u32)> = g.engine.progress().collect();
        for (id, generated) in progress {
            if let Some((tx, sent)) = g.streams.get_mut(&id) {
                if generated > *sent {
                    let _ = tx.send(Ev::Tokens(generated - *sent));
                    *sent = generated;
                }
            }
        }
        for f in fin {
            if let Some((tx, sent)) = g.streams.remove(&f.req.id) {
                if f.output_tokens > sent {
                    let _ = tx.send(Ev::Tokens(f.output_tokens - sent));
                }
                let _ = tx.send(Ev::Done(f.output_tokens));
            }
            g.counters.finished += 1;
            g.counters.generation_tokens += f.output_tokens as u64;
        }
    }
}

fn error(status: StatusCode, msg: String) -> Response {
    (
        status,
        Json(json!({"object": "error", "message": msg, "type": "BadRequestError", "code": status.as_u16()})),
    )
        .into_response()
}

fn prompt_tokens(body: &Value) -> std::result::Result<u32, String> {
    match body.get("prompt") {
        Some(Value::String(s)) => Ok((s.len() as u32).div_ceil(4).max(1)),
        Some(Value::Array(a)) if a.iter().all(|v| v.is_u64()) => Ok(a.len() as u32),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok((a[0].as_str().unwrap().len() as u32).div_ceil(4).max(1))
        }
        Some(_) => Err("`prompt` must be a string or a list of token ids".into()),
        None => Err("`prompt` is required".into()),
    }
}

fn chunk(id: &str, model: &str, created: u64, text: &str, finish: Option<&str>, ids: Option<Vec<u32>>) -> Bytes {
    let mut v = json!({"id": id, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}]});
    if let Some(ids) = ids {
        v["choices"][0]["token_ids"] = json!(ids);
    }
    Bytes::from(format!("data: {v}\n\n"))
}

async fn completions(State(sh): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    let prompt = match prompt_tokens(&body) {
        Ok(n) => n,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let max_tokens = body.get("max_tokens").and_then(|v| v.as_u64()).unwrap_or(16) as u32;
    if max_tokens == 0 {
        return error(StatusCode::BAD_REQUEST, "`max_tokens` must be at least 1".into());
    }
    let priority = body.get("priority").and_then(|v| v.as_i64()).unwrap_or(0);
    if priority != 0 && !sh.priorities {
        // As vLLM answers when it runs the default fcfs policy.
        return error(
            StatusCode::BAD_REQUEST,
            format!("Got priority {priority} but Priority scheduling is not enabled."),
        );
    }
    let stream = body.get("stream").and_then(|v| v.as_bool()).unwrap_or(false);
    let usage_in_stream = body
        .pointer("/stream_options/include_usage")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    // As vLLM 0.32 does: a prompt that alone fills the context is refused; otherwise
    // max_tokens is cut to what the context leaves, and min_tokens must fit under the cut.
    if prompt >= sh.max_model_len {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "This model's maximum context length is {} tokens. However, your prompt contains {prompt} input tokens, \
                 which exceeds this limit even without any output tokens.",
                sh.max_model_len
            ),
        );
    }
    let max_tokens = max_tokens.min(sh.max_model_len - prompt);
    if let Some(min) = body.get("min_tokens").and_then(|v| v.as_u64()) {
        if min > max_tokens as u64 {
            return error(
                StatusCode::BAD_REQUEST,
                format!("min_tokens must be less than or equal to max_tokens={max_tokens}, got {min}."),
            );
        }
    }
    let token_ids = body.get("return_token_ids").and_then(|v| v.as_bool()).unwrap_or(false);
    let (tx, rx) = mpsc::unbounded_channel();
    let id = {
        let mut g = sh.inner.lock().expect("emulator state");
        let id = g.next_id;
        g.next_id += 1;
        let now = sh.now();
        let req = NewRequest {
            id,
            workflow: id,
            stage: 0,
            prompt_tokens: prompt,
            output_tokens: max_tokens,
            priority,
            arrival_ns: now,
            dispatch_ns: now,
        };
        if let Some(f) = g.engine.add_request(req) {
            if f.rejected {
                return error(StatusCode::BAD_REQUEST, "the prompt does not fit this engine".into());
            }
        }
        g.counters.prompt_tokens += prompt as u64;
        g.streams.insert(id, (tx, 0));
        id
    };
    sh.wake.notify_one();
    let rid = format!("cmpl-{id}");
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let model = sh.model.clone();
    let usage = move |n: u32| json!({"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n});
    if !stream {
        let mut rx = rx;
        let mut n = 0;
        while let Some(ev) = rx.recv().await {
            if let Ev::Done(k) = ev {
                n = k;
                break;
            }
        }
        return Json(
            json!({"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": " tok".repeat(n as usize), "logprobs": null, "finish_reason": "length"}],
            "usage": usage(n)}),
        )
        .into_response();
    }
    // With `return_token_ids`, each chunk lists the ids of its tokens (made up from the
    // request id and the position; the emulator generates no real text).
    let mut sent = 0u32;
    let events = UnboundedReceiverStream::new(rx).map(move |ev| -> std::result::Result<Bytes, std::io::Error> {
        Ok(match ev {
            Ev::Tokens(k) => {
                let ids = token_ids.then(|| {
                    (sent..sent + k)
                        .map(|p| 1000 + ((id.wrapping_mul(7919) + p as u64 * 104_729) % 30_000) as u32)
                        .collect()
                });
                sent += k;
                chunk(&rid, &model, created, &" tok".repeat(k as usize), None, ids)
            }
            Ev::Done(n) => {
                let mut out = chunk(&rid, &model, created, "", Some("length"), token_ids.then(Vec::new)).to_vec();
                if usage_in_stream {
                    let u = json!({"id": rid, "object": "text_completion", "created": created, "model": model,
                        "choices": [], "usage": usage(n)});
                    out.extend_from_slice(format!("data: {u}\n\n").as_bytes());
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                Bytes::from(out)
            }
        })
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(events))
        .expect("response")
}

async fn metrics(State(sh): State<Arc<Shared>>) -> Response {
    let g = sh.inner.lock().expect("emulator state");
    let m = &sh.model;
    let used = g.engine.kv().used() as f64 / sh.usable_blocks.max(1) as f64;
    let c = &g.counters;
    let text = format!(
        "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name=\"{m}\"}} {}\n\
         # TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name=\"{m}\"}} {}\n\
         # TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{model_name=\"{m}\"}} {used}\n\
         # TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc{{model_name=\"{m}\"}} {used}\n\
         # TYPE vllm:num_preemptions counter\nvllm:num_preemptions_total{{model_name=\"{m}\"}} {}\n\
         # TYPE vllm:prompt_tokens counter\nvllm:prompt_tokens_total{{model_name=\"{m}\"}} {}\n\
         # TYPE vllm:generation_tokens counter\nvllm:generation_tokens_total{{model_name=\"{m}\"}} {}\n\
         # TYPE vllm:request_success counter\nvllm:request_success_total{{model_name=\"{m}\",finished_reason=\"length\"}} {}\n\
         # TYPE vllm:iteration_tokens_total histogram\nvllm:iteration_tokens_total_sum{{model_name=\"{m}\"}} {}\n\
         vllm:iteration_tokens_total_count{{model_name=\"{m}\"}} {}\n\
         # TYPE vllm:prefix_cache_queries counter\nvllm:prefix_cache_queries_total{{model_name=\"{m}\"}} {}\n\
         # TYPE vllm:prefix_cache_hits counter\nvllm:prefix_cache_hits_total{{model_name=\"{m}\"}} {}\n\
         # TYPE vllm:cache_config_info gauge\nvllm:cache_config_info{{block_size=\"{}\",num_gpu_blocks=\"{}\"}} 1.0\n",
        g.engine.num_running(),
        g.engine.num_waiting(),
        c.preemptions,
        c.prompt_tokens,
        c.generation_tokens,
        c.finished,
        c.step_tokens,
        c.steps,
        g.engine.prefix_queries,
        g.engine.prefix_hits,
        sh.block_size,
        sh.usable_blocks + 1,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The HTTP app of an emulated engine.
pub fn app(e: &ResolvedEngine) -> Router {
    let usable = e.kv.num_gpu_blocks.saturating_sub(1);
    let engine = Engine::new(0, e.limits.clone(), Arc::new(e.steptime.clone()), usable);
    let sh = Arc::new(Shared {
        inner: Mutex::new(Inner {
            engine,
            streams: HashMap::new(),
            next_id: 0,
            counters: Counters::default(),
        }),
        wake: Condvar::new(),
        start: Instant::now(),
        model: e.model.clone(),
        max_model_len: e.limits.max_model_len,
        usable_blocks: usable,
        block_size: e.limits.block_size,
        priorities: !matches!(e.limits.policy, crate::engine::EnginePolicy::Fcfs),
    });
    let engine_sh = sh.clone();
    std::thread::Builder::new()
        .name("emulated-engine".into())
        .spawn(move || engine_loop(engine_sh))
        .expect("spawn the engine thread");
    let (m, max_len) = (e.model.clone(), e.limits.max_model_len);
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "" }))
        .route(
            "/v1/models",
            get(move || {
                let m = m.clone();
                async move {
                    Json(json!({"object": "list", "data": [{"id": m, "object": "model", "owned_by": "chimera-emulate", "max_model_len": max_len}]}))
                }
            }),
        )
        .with_state(sh)
}

/// Serve one emulated engine on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, e: &ResolvedEngine) -> Result<()> {
    let app = app(e);
    axum::serve(listener, app)
        .await
        .map_err(|x| Error::other(format!("emulate: {x}")))
}
