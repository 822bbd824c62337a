//! ENDPOINTS.yaml: where each model of a scenario is served during a replay, and how to talk
//! to it (endpoint kind, API key, timeouts, concurrency, retries, /metrics sampling).
//!
//! ```yaml
//! models:
//!   Qwen2.5-1.5B:                      # a model of the scenario (catalogue name or alias)
//!     urls: [http://10.0.0.5:8000, http://10.0.0.6:8000]   # one engine per URL
//!     kind: vllm                       # vllm (default) | llamacpp
//!     served_model: Qwen/Qwen2.5-1.5B-Instruct             # the `model` field sent
//!     api_key_env: VLLM_API_KEY        # or api_key: "..." (sent as a Bearer token)
//!     max_concurrency: 256             # requests in flight per URL (client side)
//! timeouts: {connect_s: 5, first_token_s: 600, idle_s: 60, total_s: 3600}
//! retries: {max: 2, backoff_ms: 200}   # transient failures; backoff doubles per attempt
//! metrics_interval_ms: 1000            # /metrics sampling period per URL (0: off)
//! ```
//!
//! Parsing only: nothing here opens a connection.

use crate::error::{Error, Result};
use crate::hw::catalog::Catalog;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which server software answers: request fields and metric names differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// vLLM's OpenAI-compatible server (and `chimera emulate`).
    #[default]
    Vllm,
    /// llama.cpp's `llama-server`.
    Llamacpp,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Vllm => "vllm",
            Kind::Llamacpp => "llamacpp",
        }
    }
}

/// How prompts are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PromptForm {
    /// Token ids: exact prompt lengths (both vLLM and llama.cpp accept them).
    #[default]
    TokenIds,
    /// Text of about the right length (one word per token), for servers without token ids.
    Text,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEndpoints {
    pub urls: Vec<String>,
    #[serde(default)]
    pub kind: Kind,
    /// The `model` field of each request; default: the key of this entry.
    #[serde(default)]
    pub served_model: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
    /// Read the API key from this environment variable at start.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Requests in flight per URL, enforced by the client (a bound on its own queue).
    #[serde(default = "default_concurrency")]
    pub max_concurrency: u32,
    #[serde(default)]
    pub prompt: PromptForm,
    /// Send the `priority` field: default only where the scenario's engine runs a priority
    /// policy (vLLM refuses it otherwise) and never to llama.cpp (which has no such field).
    #[serde(default)]
    pub send_priority: Option<bool>,
    /// Token ids are drawn from [1000, vocab); default: the catalogue model's vocabulary, at
    /// most 32000.
    #[serde(default)]
    pub vocab: Option<u32>,
}

fn default_concurrency() -> u32 {
    256
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default = "d_connect")]
    pub connect_s: f64,
    /// From sending to the first streamed token.
    #[serde(default = "d_first")]
    pub first_token_s: f64,
    /// Longest gap between two chunks of a stream.
    #[serde(default = "d_idle")]
    pub idle_s: f64,
    /// The whole request.
    #[serde(default = "d_total")]
    pub total_s: f64,
}

fn d_connect() -> f64 {
    5.0
}
fn d_first() -> f64 {
    600.0
}
fn d_idle() -> f64 {
    60.0
}
fn d_total() -> f64 {
    3600.0
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_s: d_connect(),
            first_token_s: d_first(),
            idle_s: d_idle(),
            total_s: d_total(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Retries of a transient failure (connection refused, timeout, 5xx, 429, broken stream)
    /// before the request, and its workflow, fail. Default: the scenario's policy.max_retries.
    #[serde(default)]
    pub max: Option<u32>,
    /// Backoff before retry k: backoff_ms * 2^(k-1).
    #[serde(default = "d_backoff")]
    pub backoff_ms: u64,
}

fn d_backoff() -> u64 {
    200
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            max: None,
            backoff_ms: d_backoff(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoints {
    pub models: BTreeMap<String, ModelEndpoints>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub retries: Retries,
    #[serde(default = "d_metrics")]
    pub metrics_interval_ms: u64,
}

fn d_metrics() -> u64 {
    1000
}

/// One URL of one model: an engine of the replay.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `<model>@<host:port>`.
    pub name: String,
    /// The scenario model it serves.
    pub model: String,
    pub base: BaseUrl,
    pub kind: Kind,
    pub served_model: String,
    pub api_key: Option<String>,
    pub max_concurrency: u32,
    pub prompt: PromptForm,
    pub send_priority: Option<bool>,
    pub vocab: u32,
}

/// A parsed `http://host:port[/prefix]` URL.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseUrl {
    pub url: String,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash (`""` or `/v1`-less mount points like `/serve`).
    pub prefix: String,
}

impl BaseUrl {
    pub fn parse(url: &str) -> std::result::Result<BaseUrl, String> {
        let rest = if let Some(r) = url.strip_prefix("http://") {
            r
        } else if url.starts_with("https://") {
            return Err(format!(
                "`{url}`: https is not supported; replay speaks plain HTTP (put a TLS-terminating proxy in front, or use the server's http port)"
            ));
        } else {
            return Err(format!("`{url}`: expected http://HOST:PORT"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| format!("`{url}`: bad port `{p}`"))?)
            }
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("`{url}`: no host"));
        }
        let mut prefix = path.trim_end_matches('/').to_string();
        // A base URL given with /v1 (as OpenAI clients take it) means the same server.
        if prefix.ends_with("/v1") {
            prefix.truncate(prefix.len() - 3);
        }
        Ok(BaseUrl {
            url: url.trim_end_matches('/').to_string(),
            host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            port,
            prefix,
        })
    }

    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The full URL of a path (`/v1/completions`).
    pub fn join(&self, path: &str) -> String {
        format!("http://{}:{}{}{}", self.host, self.port, self.prefix, path)
    }
}

impl Endpoints {
    pub fn load(path: &std::path::Path) -> Result<Endpoints> {
        let text = crate::input::read_text(&path)?;
        let eps: Endpoints = crate::scenario::yaml::from_yaml_str(&text).map_err(|e| e.context(path.display()))?;
        eps.check().map_err(|e| e.context(path.display()))?;
        Ok(eps)
    }

    /// What can be checked without the scenario: at least one model, each with URLs that parse,
    /// a concurrency of at least one, and timeouts, retries and sampling within bounds a
    /// replay can wait for. (Which models the scenario needs is checked by `engines`.)
    pub fn check(&self) -> Result<()> {
        if self.models.is_empty() {
            return Err(Error::bad(
                "models: no models; give `models: {MODEL: {urls: [http://HOST:PORT]}}`",
            ));
        }
        for (key, m) in &self.models {
            if m.urls.is_empty() {
                return Err(Error::bad(format!("models.{key}.urls: at least one URL is needed")));
            }
            for (i, u) in m.urls.iter().enumerate() {
                BaseUrl::parse(u).map_err(|e| Error::bad(format!("models.{key}.urls[{i}]: {e}")))?;
            }
            if !(1..=100_000).contains(&m.max_concurrency) {
                return Err(Error::bad(format!(
                    "models.{key}.max_concurrency: expected 1 to 100000, got {}",
                    m.max_concurrency
                )));
            }
        }
        let t = &self.timeouts;
        for (what, v) in [
            ("connect_s", t.connect_s),
            ("first_token_s", t.first_token_s),
            ("idle_s", t.idle_s),
            ("total_s", t.total_s),
        ] {
            if !(v > 0.0 && v <= 1e6) {
                return Err(Error::bad(format!(
                    "timeouts.{what}: expected a number of seconds in (0, 1e6], got {}",
                    crate::error::num(v)
                )));
            }
        }
        if let Some(n) = self.retries.max {
            if n > 100 {
                return Err(Error::bad(format!("retries.max: expected 0 to 100, got {n}")));
            }
        }
        if self.retries.backoff_ms > 600_000 {
            return Err(Error::bad(format!(
                "retries.backoff_ms: expected 0 to 600000 (10 minutes), got {}",
                self.retries.backoff_ms
            )));
        }
        if self.metrics_interval_ms > 3_600_000 {
            return Err(Error::bad(format!(
                "metrics_interval_ms: expected 0 (off) to 3600000, got {}",
                self.metrics_interval_ms
            )));
        }
        Ok(())
    }

    /// The engines of a replay: for each model of the scenario, in the scenario's model order,
    /// one engine per URL. Every scenario model needs endpoints; every entry must be a model of
    /// the scenario.
    pub fn engines(&self, scenario_models: &[String]) -> Result<Vec<Endpoint>> {
        let cat = Catalog::builtin();
        let canonical = |name: &str| {
            cat.model(name)
                .map(|m| m.name.clone())
                .unwrap_or_else(|_| name.to_string())
        };
        let mut by_model: BTreeMap<String, (&String, &ModelEndpoints)> = BTreeMap::new();
        for (key, m) in &self.models {
            let c = canonical(key);
            let Some(model) = scenario_models.iter().find(|s| **s == c || **s == *key) else {
                return Err(Error::bad(format!(
                    "models.{key}: not a model of the scenario; allowed: {}",
                    scenario_models.join(", ")
                )));
            };
            if by_model.insert(model.clone(), (key, m)).is_some() {
                return Err(Error::bad(format!("models.{key}: model {model} is listed twice")));
            }
        }
        self.check()?;
        let mut out = Vec::new();
        for model in scenario_models {
            let Some((key, m)) = by_model.get(model) else {
                return Err(Error::bad(format!(
                    "models: no endpoints for scenario model {model}; add `models: {{{model}: {{urls: [http://HOST:PORT]}}}}`"
                )));
            };
            let api_key = match (&m.api_key, &m.api_key_env) {
                (Some(k), _) => Some(k.clone()),
                (None, Some(var)) => Some(std::env::var(var).map_err(|_| {
                    Error::bad(format!(
                        "models.{key}.api_key_env: environment variable {var} is not set"
                    ))
                })?),
                (None, None) => None,
            };
            let vocab = match m.vocab {
                Some(v) if v <= 1001 => {
                    return Err(Error::bad(format!("models.{key}.vocab: must be above 1001, got {v}")))
                }
                Some(v) => v,
                None => cat.model(model).map(|s| s.vocab.min(32_000) as u32).unwrap_or(32_000),
            };
            for (i, u) in m.urls.iter().enumerate() {
                let base = BaseUrl::parse(u).map_err(|e| Error::bad(format!("models.{key}.urls[{i}]: {e}")))?;
                out.push(Endpoint {
                    name: format!("{model}@{}", base.authority()),
                    model: model.clone(),
                    base,
                    kind: m.kind,
                    served_model: m.served_model.clone().unwrap_or_else(|| (*key).clone()),
                    api_key: api_key.clone(),
                    max_concurrency: m.max_concurrency,
                    prompt: m.prompt,
                    send_priority: m.send_priority,
                    vocab,
                });
            }
        }
        let mut names: Vec<&str> = out.iter().map(|e| e.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::bad(format!("models: endpoint {} is listed twice", w[0])));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_or_say_why() {
        let u = BaseUrl::parse("http://127.0.0.1:8000/v1/").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.prefix.as_str()), ("127.0.0.1", 8000, ""));
        assert_eq!(u.join("/metrics"), "http://127.0.0.1:8000/metrics");
        let u = BaseUrl::parse("http://gpu-3/serve").unwrap();
        assert_eq!((u.port, u.prefix.as_str()), (80, "/serve"));
        for (bad, why) in [
            ("https://x:1", "https is not supported"),
            ("ftp://x", "expected http://"),
            ("http://x:port", "bad port"),
            ("http://:80", "no host"),
        ] {
            let e = BaseUrl::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    fn parse(y: &str) -> Result<Endpoints> {
        crate::scenario::yaml::from_yaml_str(y)
    }

    #[test]
    fn engines_follow_scenario_models_and_errors_name_the_path() {
        let models = vec!["Qwen2.5-1.5B".to_string(), "Qwen2.5-7B".to_string()];
        let e = parse(
            "models:\n  Qwen2.5-7B-Instruct: {urls: ['http://a:1', 'http://b:2']}\n  Qwen2.5-1.5B: {urls: ['http://c:3'], kind: llamacpp}\n",
        )
        .unwrap();
        let eng = e.engines(&models).unwrap();
        let names: Vec<&str> = eng.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["Qwen2.5-1.5B@c:3", "Qwen2.5-7B@a:1", "Qwen2.5-7B@b:2"]);
        assert_eq!(eng[0].kind, Kind::Llamacpp);
        assert_eq!(eng[1].served_model, "Qwen2.5-7B-Instruct");
        let cases = [
            ("models:\n  Llama-2-7B: {urls: ['http://a:1']}\n", "models.Llama-2-7B: not a model of the scenario; allowed: Qwen2.5-1.5B, Qwen2.5-7B"),
            ("models:\n  Qwen2.5-7B: {urls: ['http://a:1']}\n", "no endpoints for scenario model Qwen2.5-1.5B"),
            ("models:\n  Qwen2.5-7B: {urls: ['http://a:1'], kind: sglang}\n", "models.Qwen2.5-7B.kind: unknown variant `sglang`, expected `vllm` or `llamacpp`"),
            ("models:\n  Qwen2.5-7B: {urls: ['http://a:1'], batch: 3}\n", "models.Qwen2.5-7B.batch: unknown field `batch`, expected one of `urls`"),
            ("models:\n  Qwen2.5-1.5B: {urls: ['http://a:1']}\n  Qwen2.5-7B: {urls: ['https://b:2']}\n", "models.Qwen2.5-7B.urls[0]: `https://b:2`: https is not supported"),
            ("models:\n  Qwen2.5-1.5B: {urls: []}\n  Qwen2.5-7B: {urls: ['http://b:2']}\n", "models.Qwen2.5-1.5B.urls: at least one URL"),
            ("models:\n  Qwen2.5-1.5B: {urls: ['http://b:2']}\n  Qwen2.5-7B: {urls: ['http://b:2']}\ntimeouts: {idle_s: 0}\n", "timeouts.idle_s: expected a number of seconds in (0, 1e6]"),
            ("models:\n  Qwen2.5-1.5B: {urls: ['http://b:2']}\n  Qwen2.5-7B: {urls: ['http://b:3']}\ntimeouts: {first_token_s: 1e300}\n", "timeouts.first_token_s: expected a number of seconds in (0, 1e6], got 1e300"),
            ("models: {}\n", "models: no models"),
            ("models:\n  Qwen2.5-1.5B: {urls: ['ftp://b:2']}\n", "models.Qwen2.5-1.5B.urls[0]"),
            ("models:\n  Qwen2.5-1.5B: {urls: ['http://b:99999']}\n", "bad port"),
            ("models:\n  Qwen2.5-1.5B: {urls: ['http://b:2'], max_concurrency: 0}\n", "models.Qwen2.5-1.5B.max_concurrency: expected 1 to 100000"),
            ("models:\n  Qwen2.5-1.5B: {urls: ['http://b:2']}\nretries: {max: 4294967295}\n", "retries.max: expected 0 to 100"),
            ("models:\n  Qwen2.5-1.5B: {urls: ['http://b:2']}\nretries: {backoff_ms: 100000000}\n", "retries.backoff_ms"),
            ("models:\n  Qwen2.5-1.5B: {urls: ['http://b:2']}\nmetrics_interval_ms: 100000000000\n", "metrics_interval_ms"),
            ("models:\n  Qwen2.5-1.5B: {urls: ['http://b:2'], api_key_env: CHIMERA_NO_SUCH_VAR}\n  Qwen2.5-7B: {urls: ['http://b:3']}\n", "models.Qwen2.5-1.5B.api_key_env: environment variable CHIMERA_NO_SUCH_VAR is not set"),
        ];
        for (y, want) in cases {
            let err = parse(y)
                .and_then(|e| e.engines(&models).map(|_| ()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{y}\n  got: {err}\n  want: {want}");
        }
    }
}
