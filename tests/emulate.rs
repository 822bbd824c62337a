//! `chimera emulate` (feature `live`): a real HTTP server on 127.0.0.1 speaking the OpenAI
//! completions API, streaming with usage, vLLM's /metrics names, and timing from the engine
//! model in real time (batching included).
#![cfg(feature = "live")]

mod common;

use chimera::hw::StepShape;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

struct Server {
    _child: common::Child,
    addr: String,
}

fn start() -> Server {
    let (c, addr) = common::emulator("Qwen2.5-1.5B", "RTX-A6000", &[]);
    Server { _child: c, addr }
}

/// One HTTP/1.1 request; returns (status, body).
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status: u16 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
    (status, body)
}

fn completion(n: u32) -> String {
    format!(
        r#"{{"model":"m","prompt":[{}],"max_tokens":{n},"min_tokens":{n},"ignore_eos":true,"stream":true,"stream_options":{{"include_usage":true}}}}"#,
        vec!["7"; 200].join(",")
    )
}

#[test]
fn streams_exactly_the_asked_tokens_with_usage_and_model_timing() {
    let srv = start();
    let n = 30;
    let t0 = Instant::now();
    let (status, body) = http(&srv.addr, "POST", "/v1/completions", &completion(n));
    let e2e = t0.elapsed().as_secs_f64();
    assert_eq!(status, 200, "{body}");
    let datas: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(*datas.last().unwrap(), "[DONE]");
    let mut tokens = 0;
    let mut usage = None;
    for d in &datas[..datas.len() - 1] {
        let v: serde_json::Value = serde_json::from_str(d).unwrap();
        if let Some(u) = v.get("usage") {
            assert_eq!(v["choices"].as_array().unwrap().len(), 0);
            usage = Some(u.clone());
        } else {
            tokens += v["choices"][0]["text"].as_str().unwrap().matches(" tok").count();
        }
    }
    assert_eq!(tokens, n as usize);
    let u = usage.expect("a usage chunk");
    assert_eq!(
        (u["prompt_tokens"].as_u64(), u["completion_tokens"].as_u64()),
        (Some(200), Some(n as u64))
    );
    // The engine model's own prediction for a lone request: one prefill step, then n - 1 decodes.
    let e = chimera::scenario::single_engine("Qwen2.5-1.5B", "RTX-A6000", None, &[]).unwrap();
    let mut expect = 0.0;
    let mut s = StepShape::default();
    s.add(0, 200, true);
    expect += e.steptime.step_ns(&s) as f64 * 1e-9;
    for k in 1..n as u64 {
        let mut s = StepShape::default();
        s.add(200 + k, 1, true);
        expect += e.steptime.step_ns(&s) as f64 * 1e-9;
    }
    assert!(
        e2e >= 0.95 * expect && e2e <= expect + 0.25,
        "e2e {e2e:.3} s, model {expect:.3} s"
    );
}

#[test]
fn concurrent_requests_are_batched_and_metrics_use_vllm_names() {
    let srv = start();
    let t0 = Instant::now();
    let _ = http(&srv.addr, "POST", "/v1/completions", &completion(40));
    let one = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let addr = srv.addr.clone();
            std::thread::spawn(move || http(&addr, "POST", "/v1/completions", &completion(40)).0)
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    let six = t0.elapsed().as_secs_f64();
    assert!(
        six < 2.0 * one,
        "6 concurrent requests took {six:.3} s, one alone {one:.3} s: not batched"
    );
    let (status, m) = http(&srv.addr, "GET", "/metrics", "");
    assert_eq!(status, 200);
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:generation_tokens_total",
        "vllm:iteration_tokens_total",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
    assert!(
        m.contains("vllm:generation_tokens_total{model_name=\"Qwen2.5-1.5B\"} 280"),
        "{m}"
    );
    // Bad requests get OpenAI-style errors.
    let (status, body) = http(&srv.addr, "POST", "/v1/completions", r#"{"max_tokens": 4}"#);
    assert_eq!(status, 400);
    assert!(body.contains("`prompt` is required"), "{body}");
    // As vLLM 0.32: a prompt that alone fills the context is refused; otherwise max_tokens is
    // cut to what the context leaves, and a min_tokens above the cut is refused.
    let long = format!(r#"{{"prompt": "{}", "max_tokens": 4}}"#, "x".repeat(4 * 33_000));
    let (status, body) = http(&srv.addr, "POST", "/v1/completions", &long);
    assert_eq!(status, 400);
    assert!(body.contains("maximum context length"), "{body}");
    let (status, body) = http(
        &srv.addr,
        "POST",
        "/v1/completions",
        r#"{"prompt": "x", "max_tokens": 40000, "min_tokens": 40000}"#,
    );
    assert_eq!(status, 400);
    assert!(
        body.contains("min_tokens must be less than or equal to max_tokens=32767, got 40000"),
        "{body}"
    );
    // Like vLLM under its default fcfs policy, a priority is refused.
    let (status, body) = http(
        &srv.addr,
        "POST",
        "/v1/completions",
        r#"{"prompt": "x", "max_tokens": 2, "priority": 3}"#,
    );
    assert_eq!(status, 400);
    assert!(body.contains("Priority scheduling is not enabled"), "{body}");
}
