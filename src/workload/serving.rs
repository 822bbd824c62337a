//! Serving-benchmark workloads: single LLM calls as load generators send them (inference-perf,
//! `vllm bench serve`), for checking the engine model against real servers.
//!
//! What each request is:
//! - `shared_prefix` (inference-perf's shape): `groups` system prompts of `system_prompt_len`
//!   tokens, each with `prompts_per_group` questions of `question_len` tokens; every request
//!   asks for exactly `output_len` tokens. The prompts are made once, shuffled by the seed
//!   and sent in turn, cycling, as inference-perf does: requests of a group share their system
//!   prompt, and each whole prompt is sent again every `groups * prompts_per_group` requests
//!   (both found in the prefix cache).
//! - `fixed`: every request has `prompt_len` and `output_len` tokens, nothing shared.
//! - `trace`: one request per row of a CSV or JSON-lines file: `prompt_tokens`,
//!   `output_tokens`, optional `arrival_s` (seconds from the start), `prefix_group` and
//!   `prefix_tokens` (a prefix shared by the rows of a group).
//!
//! When they are sent:
//! - `constant` (inference-perf's): evenly spaced at `rate` per second for `duration_s`, one
//!   load stage after another;
//! - `poisson`: the same stages with exponential gaps;
//! - `closed_loop` (`vllm bench serve --max-concurrency N`): N clients, each sending its next
//!   request the moment its previous one finishes, `requests` in all;
//! - `trace`: the trace's own `arrival_s`.
//!
//! Each request is a one-stage workflow; a closed-loop client is one workflow whose stages are
//! its requests (no tool delay, no shared context).

use super::{Stage, WorkflowSpec, WorkloadSource};
use crate::error::{Error, Result};
use crate::rng::{stream, StreamRng};
use crate::time::{secs_to_ns, Nanos};
use rand::seq::SliceRandom;
use rand_distr::{Distribution, Exp};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServingSpec {
    pub requests: RequestShape,
    pub arrivals: LoadSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RequestShape {
    SharedPrefix {
        groups: u32,
        prompts_per_group: u32,
        system_prompt_len: u32,
        question_len: u32,
        output_len: u32,
    },
    Fixed {
        prompt_len: u32,
        output_len: u32,
    },
    /// A per-request trace (CSV or JSON lines), relative to the scenario file.
    Trace {
        path: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadStage {
    /// Requests per second.
    pub rate: f64,
    pub duration_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "process", rename_all = "snake_case", deny_unknown_fields)]
pub enum LoadSpec {
    Constant { stages: Vec<LoadStage> },
    Poisson { stages: Vec<LoadStage> },
    ClosedLoop { concurrency: u32, requests: u64 },
    Trace,
}

/// The most requests one serving workload may hold (a bound on memory and run time).
pub const MAX_REQUESTS: u64 = 50_000_000;

impl ServingSpec {
    pub fn validate(&self, path: &str) -> Result<()> {
        let pos = |field: &str, v: u32| -> Result<()> {
            if v == 0 {
                Err(Error::bad(format!("{path}.requests.{field}: expected at least 1")))
            } else {
                super::check_tokens(v as u64).map_err(|e| Error::bad(format!("{path}.requests.{field}: {e}")))
            }
        };
        match &self.requests {
            RequestShape::SharedPrefix {
                groups,
                prompts_per_group,
                system_prompt_len,
                question_len,
                output_len,
            } => {
                super::check_tokens(*system_prompt_len as u64)
                    .map_err(|e| Error::bad(format!("{path}.requests.system_prompt_len: {e}")))?;
                pos("groups", *groups)?;
                pos("prompts_per_group", *prompts_per_group)?;
                pos("question_len", *question_len)?;
                pos("output_len", *output_len)?;
                if (*groups as u64) * (*prompts_per_group as u64) > 10_000_000 {
                    return Err(Error::bad(format!(
                        "{path}.requests: groups x prompts_per_group must be at most 10,000,000"
                    )));
                }
            }
            RequestShape::Fixed { prompt_len, output_len } => {
                pos("prompt_len", *prompt_len)?;
                pos("output_len", *output_len)?;
            }
            RequestShape::Trace { .. } => {}
        }
        let a = format!("{path}.arrivals");
        match &self.arrivals {
            LoadSpec::Constant { stages } | LoadSpec::Poisson { stages } => {
                if stages.is_empty() {
                    return Err(Error::bad(format!(
                        "{a}.stages: expected at least one {{rate, duration_s}}"
                    )));
                }
                let mut total = 0.0;
                for (i, s) in stages.iter().enumerate() {
                    if !(s.rate > 0.0 && s.rate.is_finite()) {
                        return Err(Error::bad(format!(
                            "{a}.stages[{i}].rate: expected a number > 0, got {}",
                            s.rate
                        )));
                    }
                    if !(s.duration_s > 0.0 && s.duration_s <= 30.0 * 86_400.0) {
                        return Err(Error::bad(format!(
                            "{a}.stages[{i}].duration_s: expected seconds in (0, 2592000], got {}",
                            s.duration_s
                        )));
                    }
                    total += s.rate * s.duration_s;
                }
                if total > MAX_REQUESTS as f64 {
                    return Err(Error::bad(format!(
                        "{a}.stages: {total:.0} requests in all, more than the limit of {MAX_REQUESTS}"
                    )));
                }
            }
            LoadSpec::ClosedLoop { concurrency, requests } => {
                if *concurrency == 0 || *requests == 0 {
                    return Err(Error::bad(format!("{a}: concurrency and requests must be at least 1")));
                }
                if *requests > MAX_REQUESTS || *concurrency as u64 > *requests {
                    return Err(Error::bad(format!(
                        "{a}: expected 1 <= concurrency <= requests <= {MAX_REQUESTS}"
                    )));
                }
            }
            LoadSpec::Trace => {
                if !matches!(self.requests, RequestShape::Trace { .. }) {
                    return Err(Error::bad(format!(
                        "{a}.process: `trace` arrivals need `requests: {{kind: trace, path}}`"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Start and end (ns) of each load stage, for reports by stage.
    pub fn stage_bounds(&self) -> Vec<(Nanos, Nanos)> {
        match &self.arrivals {
            LoadSpec::Constant { stages } | LoadSpec::Poisson { stages } => {
                let mut t = 0.0;
                stages
                    .iter()
                    .map(|s| {
                        let b = (secs_to_ns(t), secs_to_ns(t + s.duration_s));
                        t += s.duration_s;
                        b
                    })
                    .collect()
            }
            _ => vec![(0, Nanos::MAX)],
        }
    }
}

/// One row of a per-request trace.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRow {
    #[serde(default)]
    pub arrival_s: Option<f64>,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    #[serde(default)]
    pub prefix_group: Option<u64>,
    #[serde(default)]
    pub prefix_tokens: Option<u32>,
}

/// Read a per-request trace: JSON lines (`.jsonl`) or CSV with a header naming the columns.
pub fn read_trace(path: &Path) -> Result<Vec<TraceRow>> {
    let p = path.display();
    let jsonl = path.extension().is_some_and(|e| e == "jsonl" || e == "json");
    let mut parsed: Vec<(u64, TraceRow)> = Vec::new();
    if jsonl {
        let text = crate::input::read_text(&path)?;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let r: TraceRow = serde_json::from_str(line).map_err(|e| Error::bad(format!("{p}:{}: {e}", i + 1)))?;
            if parsed.len() as u64 >= MAX_REQUESTS {
                return Err(Error::bad(format!("{p}: more than {MAX_REQUESTS} rows")));
            }
            parsed.push((i as u64 + 1, r));
        }
    } else {
        let mut csv = crate::csvfile::CsvFile::open(path)?;
        let header = csv.header().to_vec();
        while csv.next_record()? {
            let row = csv.line();
            let mut m = serde_json::Map::new();
            for (k, h) in header.iter().enumerate() {
                let c = csv.get(k);
                if c.is_empty() {
                    continue;
                }
                let v: f64 = c
                    .parse()
                    .map_err(|_| Error::bad(format!("{p}:{row}: column `{h}`: `{c}` is not a number")))?;
                let v = if h == "arrival_s" {
                    serde_json::json!(v)
                } else if v.fract() == 0.0 && v >= 0.0 {
                    serde_json::json!(v as u64)
                } else {
                    return Err(Error::bad(format!(
                        "{p}:{row}: column `{h}`: expected a whole number, got `{c}`"
                    )));
                };
                m.insert(h.clone(), v);
            }
            let r: TraceRow = serde_json::from_value(serde_json::Value::Object(m)).map_err(|e| {
                Error::bad(format!(
                    "{p}:{row}: {e} (columns: arrival_s, prompt_tokens, output_tokens, prefix_group, prefix_tokens)"
                ))
            })?;
            if parsed.len() as u64 >= MAX_REQUESTS {
                return Err(Error::bad(format!("{p}: more than {MAX_REQUESTS} rows")));
            }
            parsed.push((row, r));
        }
    }
    let mut rows = Vec::with_capacity(parsed.len());
    for (row, r) in parsed {
        if r.prompt_tokens == 0 || r.output_tokens == 0 {
            return Err(Error::bad(format!(
                "{p}:{row}: prompt_tokens and output_tokens must be at least 1"
            )));
        }
        for (col, v) in [
            ("prompt_tokens", Some(r.prompt_tokens)),
            ("output_tokens", Some(r.output_tokens)),
            ("prefix_tokens", r.prefix_tokens),
        ] {
            if let Some(v) = v {
                super::check_tokens(v as u64).map_err(|e| Error::bad(format!("{p}:{row}: {col}: {e}")))?;
            }
        }
        if let Some(a) = r.arrival_s {
            if !(a >= 0.0 && a < 1e7) {
                return Err(Error::bad(format!("{p}:{row}: arrival_s must be in [0, 1e7), got {a}")));
            }
        }
        rows.push(r);
    }
    if rows.is_empty() {
        return Err(Error::bad(format!("{p}: no requests")));
    }
    Ok(rows)
}

/// The request source.
pub struct ServingWorkload {
    /// (prompt, output, prefix, prompt id) of each distinct request, in sending order
    /// (cycled).
    shapes: Vec<(u32, u32, Option<(u64, u32)>, Option<u64>)>,
    /// Arrival time of each request (open loop), or None (closed loop).
    arrivals: Option<Vec<Nanos>>,
    closed: Option<(u32, u64)>,
    produced: u64,
    total: u64,
}

impl ServingWorkload {
    pub fn new(spec: &ServingSpec, seed: u64, base_dir: &Path) -> Result<Self> {
        spec.validate("workload")?;
        let mut trace_arrivals = None;
        let shapes: Vec<(u32, u32, Option<(u64, u32)>, Option<u64>)> = match &spec.requests {
            RequestShape::SharedPrefix {
                groups,
                prompts_per_group,
                system_prompt_len,
                question_len,
                output_len,
            } => {
                let mut v = Vec::with_capacity((*groups * *prompts_per_group) as usize);
                for g in 0..*groups {
                    for u in 0..*prompts_per_group {
                        let prefix = (*system_prompt_len > 0).then_some((g as u64, *system_prompt_len));
                        // inference-perf generates each (group, user) prompt once and cycles
                        // them: a prompt is sent again, whole, every `groups * prompts_per_group`
                        // requests.
                        let id = g as u64 * *prompts_per_group as u64 + u as u64;
                        v.push((system_prompt_len + question_len, *output_len, prefix, Some(id)));
                    }
                }
                let mut rng: StreamRng = stream(seed, "workload.shuffle");
                v.shuffle(&mut rng);
                v
            }
            RequestShape::Fixed { prompt_len, output_len } => vec![(*prompt_len, *output_len, None, None)],
            RequestShape::Trace { path } => {
                let rows = read_trace(&base_dir.join(path))?;
                if matches!(spec.arrivals, LoadSpec::Trace) {
                    let mut ts = Vec::with_capacity(rows.len());
                    let mut last = 0;
                    for (i, r) in rows.iter().enumerate() {
                        let t = secs_to_ns(r.arrival_s.ok_or_else(|| {
                            Error::bad(format!(
                                "{path}: row {}: no arrival_s (needed by `arrivals: trace`)",
                                i + 1
                            ))
                        })?);
                        if t < last {
                            return Err(Error::bad(format!(
                                "{path}: row {}: arrival_s goes back in time (rows must be in arrival order)",
                                i + 1
                            )));
                        }
                        last = t;
                        ts.push(t);
                    }
                    trace_arrivals = Some(ts);
                }
                rows.iter()
                    .map(|r| {
                        let prefix = r
                            .prefix_group
                            .map(|g| (g, r.prefix_tokens.unwrap_or(0).min(r.prompt_tokens)));
                        (r.prompt_tokens, r.output_tokens, prefix, None)
                    })
                    .collect()
            }
        };
        let (arrivals, closed) = match &spec.arrivals {
            LoadSpec::Trace => (trace_arrivals, None),
            LoadSpec::ClosedLoop { concurrency, requests } => (None, Some((*concurrency, *requests))),
            LoadSpec::Constant { stages } | LoadSpec::Poisson { stages } => {
                let poisson = matches!(spec.arrivals, LoadSpec::Poisson { .. });
                let mut rng: StreamRng = stream(seed, "arrivals");
                let mut ts = Vec::new();
                let mut start = 0.0;
                for s in stages {
                    let end = start + s.duration_s;
                    if poisson {
                        let exp = Exp::new(s.rate).map_err(|e| Error::bad(format!("workload.arrivals: {e}")))?;
                        let mut t = start + exp.sample(&mut rng);
                        while t < end {
                            ts.push(secs_to_ns(t));
                            t += exp.sample(&mut rng);
                        }
                    } else {
                        let n = (s.rate * s.duration_s).floor() as u64;
                        for k in 0..n {
                            ts.push(secs_to_ns(start + k as f64 / s.rate));
                        }
                    }
                    start = end;
                }
                (Some(ts), None)
            }
        };
        let total = match (&arrivals, closed) {
            (Some(a), _) => a.len() as u64,
            (None, Some((c, _))) => c as u64,
            _ => 0,
        };
        Ok(ServingWorkload {
            shapes,
            arrivals,
            closed,
            produced: 0,
            total,
        })
    }

    fn stage(&self, i: u64) -> Stage {
        let (p, o, prefix, prompt_id) = self.shapes[(i % self.shapes.len() as u64) as usize];
        Stage {
            prompt_tokens: p,
            context_tokens: 0,
            output_tokens: o,
            tool_delay_ns: 0,
            prefix,
            prompt_id,
        }
    }
}

impl WorkloadSource for ServingWorkload {
    fn next_workflow(&mut self) -> Result<Option<WorkflowSpec>> {
        if self.produced >= self.total {
            return Ok(None);
        }
        let id = self.produced;
        let (arrival_ns, stages) = match (&self.arrivals, self.closed) {
            (Some(a), _) => (a[id as usize], vec![self.stage(id)]),
            (None, Some((clients, requests))) => {
                // Client c sends requests c, c + N, c + 2N, ... one after another.
                let c = id;
                let n = (requests - c).div_ceil(clients as u64);
                (0, (0..n).map(|k| self.stage(c + k * clients as u64)).collect())
            }
            _ => return Ok(None),
        };
        self.produced += 1;
        Ok(Some(WorkflowSpec::anonymous(id, arrival_ns, stages)))
    }

    fn expected_len(&self) -> Option<u64> {
        Some(self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(y: &str) -> ServingSpec {
        serde_saphyr::from_str(y).unwrap()
    }

    fn all(w: &mut ServingWorkload) -> Vec<WorkflowSpec> {
        std::iter::from_fn(|| w.next_workflow().unwrap()).collect()
    }

    #[test]
    fn constant_stages_are_evenly_spaced_one_after_another() {
        let s = spec("requests: {kind: fixed, prompt_len: 10, output_len: 5}\narrivals: {process: constant, stages: [{rate: 2, duration_s: 3}, {rate: 4, duration_s: 1}]}");
        let v = all(&mut ServingWorkload::new(&s, 1, Path::new(".")).unwrap());
        let t: Vec<Nanos> = v.iter().map(|w| w.arrival_ns).collect();
        let ms = 1_000_000;
        assert_eq!(
            t,
            vec![
                0,
                500 * ms,
                1000 * ms,
                1500 * ms,
                2000 * ms,
                2500 * ms,
                3000 * ms,
                3250 * ms,
                3500 * ms,
                3750 * ms
            ]
        );
        assert_eq!(s.stage_bounds(), vec![(0, 3000 * ms), (3000 * ms, 4000 * ms)]);
    }

    #[test]
    fn token_counts_past_the_bound_are_refused_not_wrapped() {
        // 4294967295 + 1 wrapped to a prompt of 0 tokens before the bound.
        for (y, want) in [
            ("{kind: shared_prefix, groups: 1, prompts_per_group: 1, system_prompt_len: 4294967295, question_len: 1, output_len: 7}", "requests.system_prompt_len"),
            ("{kind: shared_prefix, groups: 1, prompts_per_group: 1, system_prompt_len: 1, question_len: 4294967295, output_len: 7}", "requests.question_len"),
            ("{kind: fixed, prompt_len: 10, output_len: 4294967295}", "requests.output_len"),
        ] {
            let s = spec(&format!("requests: {y}\narrivals: {{process: poisson, stages: [{{rate: 1, duration_s: 1}}]}}"));
            let e = s.validate("workload").unwrap_err().to_string();
            assert!(e.contains(&format!("workload.{want}")) && e.contains("4294967295 tokens"), "{e}");
        }
    }

    #[test]
    fn shared_prefix_cycles_every_prompt_once_per_round() {
        let s = spec("requests: {kind: shared_prefix, groups: 3, prompts_per_group: 2, system_prompt_len: 100, question_len: 50, output_len: 7}\narrivals: {process: poisson, stages: [{rate: 50, duration_s: 10}]}");
        let v = all(&mut ServingWorkload::new(&s, 1, Path::new(".")).unwrap());
        assert!(v.len() > 400 && v.len() < 600, "{}", v.len());
        let st: Vec<Stage> = v.iter().map(|w| w.plans[0].stages[0]).collect();
        assert!(st.iter().all(|s| s.prompt_tokens == 150 && s.output_tokens == 7));
        let first: Vec<Option<u64>> = st[..6].iter().map(|s| s.prompt_id).collect();
        for round in st.chunks(6).filter(|c| c.len() == 6) {
            let mut groups: Vec<u64> = round.iter().map(|s| s.prefix.unwrap().0).collect();
            groups.sort();
            assert_eq!(groups, vec![0, 0, 1, 1, 2, 2]);
            // Each whole prompt comes back once a round, in the same order (inference-perf's
            // `data_index % len(prompts)`), and belongs to its group.
            let ids: Vec<Option<u64>> = round.iter().map(|s| s.prompt_id).collect();
            assert_eq!(ids, first);
            assert!(round.iter().all(|s| s.prompt_id.unwrap() / 2 == s.prefix.unwrap().0));
        }
        let mut ids: Vec<u64> = first.iter().map(|i| i.unwrap()).collect();
        ids.sort();
        assert_eq!(ids, vec![0, 1, 2, 3, 4, 5]);
        // A fixed shape repeats nothing.
        let f = spec("requests: {kind: fixed, prompt_len: 10, output_len: 5}\narrivals: {process: poisson, stages: [{rate: 5, duration_s: 2}]}");
        let v = all(&mut ServingWorkload::new(&f, 1, Path::new(".")).unwrap());
        assert!(v.iter().all(|w| w.plans[0].stages[0].prompt_id.is_none()));
    }

    #[test]
    fn closed_loop_clients_are_workflows_of_their_requests() {
        let s = spec("requests: {kind: fixed, prompt_len: 10, output_len: 5}\narrivals: {process: closed_loop, concurrency: 3, requests: 10}");
        let v = all(&mut ServingWorkload::new(&s, 1, Path::new(".")).unwrap());
        let n: Vec<usize> = v.iter().map(|w| w.plans[0].stages.len()).collect();
        assert_eq!(n, vec![4, 3, 3]);
        assert!(v.iter().all(|w| w.arrival_ns == 0));
    }

    #[test]
    fn traces_read_csv_and_jsonl_and_name_the_bad_row() {
        let d = std::env::temp_dir().join(format!("chimera-serving-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("a.csv"),
            "arrival_s,prompt_tokens,output_tokens,prefix_group,prefix_tokens\n0.5,100,10,1,32\n1.0,90,20,,\n",
        )
        .unwrap();
        std::fs::write(d.join("a.jsonl"), "{\"arrival_s\": 0.5, \"prompt_tokens\": 100, \"output_tokens\": 10, \"prefix_group\": 1, \"prefix_tokens\": 32}\n{\"arrival_s\": 1.0, \"prompt_tokens\": 90, \"output_tokens\": 20}\n").unwrap();
        assert_eq!(
            read_trace(&d.join("a.csv")).unwrap(),
            read_trace(&d.join("a.jsonl")).unwrap()
        );
        let s = spec("requests: {kind: trace, path: a.csv}\narrivals: {process: trace}");
        let v = all(&mut ServingWorkload::new(&s, 1, &d).unwrap());
        assert_eq!(v[1].arrival_ns, 1_000_000_000);
        assert_eq!(v[0].plans[0].stages[0].prefix, Some((1, 32)));
        std::fs::write(
            d.join("b.csv"),
            "arrival_s,prompt_tokens,output_tokens\n0.5,100,10\n1.0,x,20\n",
        )
        .unwrap();
        let e = read_trace(&d.join("b.csv")).unwrap_err().to_string();
        assert!(e.contains("b.csv:3") && e.contains("prompt_tokens"), "{e}");
        std::fs::write(
            d.join("c.jsonl"),
            "{\"prompt_tokens\": 1, \"output_tokens\": 1, \"colour\": 2}\n",
        )
        .unwrap();
        let e = read_trace(&d.join("c.jsonl")).unwrap_err().to_string();
        assert!(e.contains("c.jsonl:1") && e.contains("colour"), "{e}");
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn bad_specs_name_the_field() {
        let s = spec("requests: {kind: fixed, prompt_len: 10, output_len: 5}\narrivals: {process: constant, stages: [{rate: 0, duration_s: 3}]}");
        assert!(s
            .validate("workload")
            .unwrap_err()
            .to_string()
            .contains("workload.arrivals.stages[0].rate"));
        let s = spec("requests: {kind: fixed, prompt_len: 10, output_len: 5}\narrivals: {process: trace}");
        assert!(s
            .validate("workload")
            .unwrap_err()
            .to_string()
            .contains("arrivals.process"));
    }
}
