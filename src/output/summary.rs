//! Running aggregates of a run and the `summary.json` they become.

use super::Sketch;
use crate::output::schema::RequestRow;
use crate::runtime::WorkflowOutcome;
use crate::time::{ns_to_secs, Nanos};
use serde::Serialize;

/// count, mean, p50, p90, p99, max of one latency, in the unit its name says.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stats {
    pub count: u64,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Stats {
    /// From a sketch of nanosecond values, scaled by `1 / unit_ns`.
    pub fn from_sketch(s: &Sketch, unit_ns: f64) -> Stats {
        let f = |x: Option<f64>| x.map(|v| round6(v / unit_ns));
        Stats {
            count: s.count(),
            mean: f(s.mean()),
            p50: f(s.quantile(0.5)),
            p90: f(s.quantile(0.9)),
            p99: f(s.quantile(0.99)),
            max: f(s.max()),
        }
    }
}

/// Round to 6 significant decimals after the point, so summaries read well and stay stable.
pub fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

#[derive(Debug, Default)]
pub struct ModelAgg {
    pub workflows: u64,
    pub known: u64,
    pub solved: u64,
    pub e2e: Sketch,
    pub output_tokens: u64,
}

/// Everything the summary needs, accumulated in fixed memory.
#[derive(Debug)]
pub struct Aggregates {
    pub ttft: Sketch,
    pub tpot: Sketch,
    pub e2e: Sketch,
    pub queue: Sketch,
    pub wf_e2e: Sketch,
    pub wf_e2e_per_token: Sketch,
    pub requests: u64,
    pub rejected: u64,
    pub workflows: u64,
    pub workflows_failed: u64,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    pub preemptions: u64,
    /// Prompt tokens served from the prefix cache at first scheduling, over all requests.
    pub cached_tokens: u64,
    pub first_arrival_ns: Option<Nanos>,
    pub last_finish_ns: Nanos,
    /// Per model, in the cluster's model order.
    pub by_model: Vec<(String, ModelAgg)>,
    /// The confidences workflows were routed by, against their outcomes.
    pub confidence: ConfidenceAgg,
    /// The steady-state window, when the run's length is known ([`Aggregates::set_window`]).
    pub steady: Option<SteadyAgg>,
}

/// Workflows in the steady-state window: arrivals from `from` to `to` (0-based arrival order),
/// leaving out the warm-up (the first tenth, arriving at an empty cluster) and the drain (the
/// last tenth, served as the load falls away).
#[derive(Debug, Clone)]
pub struct SteadyAgg {
    pub from: u64,
    pub to: u64,
    pub e2e: Sketch,
    pub e2e_per_token: Sketch,
    /// Workflow E2E in the window's first and second half by arrival: a backlog that grows
    /// through the window (an overloaded cluster) shows as a second half much slower.
    pub first_half: Sketch,
    pub second_half: Sketch,
    pub workflows: u64,
    pub known: u64,
    pub solved: u64,
    /// First and last arrival, first and last finish of the window's workflows.
    pub arrivals: (Nanos, Nanos),
    pub finishes: (Nanos, Nanos),
}

/// Above this, either ratio marks a run overloaded: the median workflow E2E of the window's
/// second half over its first half (a cluster that keeps up has a stationary backlog, ratio
/// near 1; one that does not has a backlog growing with every arrival), or the span over
/// which the window's workflows finish over the span over which they arrive (near 1 when the
/// cluster serves them as fast as they come; long when they pile up and drain afterwards).
pub const OVERLOAD_GROWTH: f64 = 1.5;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SteadySummary {
    /// Arrival indices of the window, [from, to).
    pub from_workflow: u64,
    pub to_workflow: u64,
    pub workflows: u64,
    pub e2e_s: Stats,
    pub e2e_per_output_token_ms: Stats,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Median workflow E2E of the window's second half over its first half.
    pub growth: f64,
    /// Span of the window's finishes over the span of its arrivals.
    pub finish_span_ratio: f64,
    /// Either ratio above 1.5: the cluster does not keep up with this load, or the run is too
    /// short to reach a steady state (its window's arrivals span little more than one
    /// workflow's latency); either way its latency figures depend on how long the run is.
    pub overloaded: bool,
}

impl Aggregates {
    pub fn new(models: &[String]) -> Self {
        Aggregates {
            ttft: Sketch::new(),
            tpot: Sketch::new(),
            e2e: Sketch::new(),
            queue: Sketch::new(),
            wf_e2e: Sketch::new(),
            wf_e2e_per_token: Sketch::new(),
            requests: 0,
            rejected: 0,
            workflows: 0,
            workflows_failed: 0,
            prompt_tokens: 0,
            output_tokens: 0,
            preemptions: 0,
            cached_tokens: 0,
            first_arrival_ns: None,
            last_finish_ns: 0,
            by_model: models.iter().map(|m| (m.clone(), ModelAgg::default())).collect(),
            confidence: ConfidenceAgg::new(models),
            steady: None,
        }
    }

    /// Count one request row (every driver's rows come through here). `queue_ns`: the wait
    /// the driver measures (the simulator: until first scheduled; a replay: until sent).
    pub fn add_request(&mut self, r: &RequestRow, queue_ns: Option<i64>) {
        use crate::output::schema::RequestStatus;
        self.requests += 1;
        self.preemptions += r.preemptions as u64;
        self.cached_tokens += r.cached_tokens.unwrap_or(0) as u64;
        match r.status {
            RequestStatus::Ok => {
                if let (Some(a), Some(b)) = (r.ttft_ns(), r.e2e_ns()) {
                    self.ttft.add(a as f64);
                    self.e2e.add(b as f64);
                }
                if let Some(q) = queue_ns {
                    self.queue.add(q as f64);
                }
                if let Some(t) = r.tpot_ns() {
                    self.tpot.add(t);
                }
                self.prompt_tokens += r.prompt_tokens as u64;
                self.output_tokens += r.output_tokens as u64;
            }
            RequestStatus::Rejected => self.rejected += 1,
            RequestStatus::Failed => {}
        }
        self.first_arrival_ns = Some(self.first_arrival_ns.map_or(r.arrival_ns, |a| a.min(r.arrival_ns)));
        self.last_finish_ns = self.last_finish_ns.max(r.finish_ns.unwrap_or(r.dispatch_ns));
    }

    /// Count one finished workflow of model `model` (index into the models).
    /// Measure a steady-state window too, for a run of `n` workflows (arrival ids 0..n): the
    /// middle 80 % by arrival. Runs of fewer than 20 workflows get none.
    pub fn set_window(&mut self, n: u64) {
        self.steady = (n >= 20).then(|| SteadyAgg {
            from: n / 10,
            to: n - n / 10,
            e2e: Sketch::new(),
            e2e_per_token: Sketch::new(),
            first_half: Sketch::new(),
            second_half: Sketch::new(),
            workflows: 0,
            known: 0,
            solved: 0,
            arrivals: (Nanos::MAX, Nanos::MIN),
            finishes: (Nanos::MAX, Nanos::MIN),
        });
    }

    pub fn add_workflow(&mut self, model: u32, w: &WorkflowOutcome) {
        let e2e = w.e2e_ns();
        if let Some(st) = &mut self.steady {
            if (st.from..st.to).contains(&w.id) {
                st.workflows += 1;
                st.arrivals = (st.arrivals.0.min(w.arrival_ns), st.arrivals.1.max(w.arrival_ns));
                st.finishes = (st.finishes.0.min(w.finish_ns), st.finishes.1.max(w.finish_ns));
                if let Some(s) = w.success {
                    st.known += 1;
                    st.solved += s as u64;
                }
                if !w.failed() {
                    st.e2e.add(e2e as f64);
                    if w.output_tokens > 0 {
                        st.e2e_per_token.add(e2e as f64 / w.output_tokens as f64);
                    }
                    if w.id < (st.from + st.to) / 2 {
                        st.first_half.add(e2e as f64);
                    } else {
                        st.second_half.add(e2e as f64);
                    }
                }
            }
        }
        self.workflows += 1;
        let m = &mut self.by_model[model as usize].1;
        m.workflows += 1;
        m.output_tokens += w.output_tokens;
        if let Some(s) = w.success {
            m.known += 1;
            m.solved += s as u64;
        }
        if w.failed() {
            self.workflows_failed += 1;
        } else {
            m.e2e.add(e2e as f64);
            self.wf_e2e.add(e2e as f64);
            if w.output_tokens > 0 {
                self.wf_e2e_per_token.add(e2e as f64 / w.output_tokens as f64);
            }
        }
        self.last_finish_ns = self.last_finish_ns.max(w.finish_ns);
        for (m, c, solved) in &w.confidence {
            if let Some(s) = solved {
                self.confidence.add(m, *c, *s);
            }
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RequestSummary {
    pub count: u64,
    pub rejected: u64,
    pub preemptions: u64,
    pub ttft_ms: Stats,
    pub tpot_ms: Stats,
    pub e2e_ms: Stats,
    pub queue_ms: Stats,
    /// Attempts that failed without an answer and were retried or gave up (runs with faults,
    /// replays).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_attempts: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct WorkflowSummary {
    pub count: u64,
    pub failed: u64,
    pub e2e_s: Stats,
    pub e2e_per_output_token_ms: Stats,
}

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub makespan_s: f64,
    pub requests_per_s: f64,
    pub workflows_per_s: f64,
    pub prompt_tokens_per_s: f64,
    pub output_tokens_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Accuracy {
    pub known: u64,
    pub solved: u64,
    pub accuracy: f64,
}

#[derive(Debug, Serialize)]
pub struct ModelSummary {
    pub model: String,
    pub workflows: u64,
    pub share: f64,
    pub output_tokens: u64,
    pub e2e_s: Stats,
    pub accuracy: Option<Accuracy>,
}

#[derive(Debug, Serialize)]
pub struct EngineSummary {
    pub name: String,
    pub model: String,
    pub gpu: String,
    pub tensor_parallel: u32,
    pub steps: u64,
    pub busy_fraction: f64,
    pub mean_step_tokens: f64,
    pub preemptions: u64,
    pub kv_capacity_tokens: u64,
    pub decode_tokens_per_s_nominal: f64,
    pub step_time_source: String,
    /// What error to expect of the step times (the calibration's cross-validated error where
    /// it records one).
    pub step_time_expected_error: String,
    /// Prompt tokens looked up in the prefix cache and found (vLLM's prefix_cache_queries and
    /// prefix_cache_hits), and their ratio.
    /// (None where the driver cannot see them: a replay reads the server's counters into
    /// metrics.parquet instead.)
    pub prefix_cache_queries: Option<u64>,
    pub prefix_cache_hits: Option<u64>,
    pub prefix_cache_hit_rate: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub seed: u64,
    pub policy: String,
    pub requests: RequestSummary,
    pub workflows: WorkflowSummary,
    pub throughput: Throughput,
    pub accuracy: Option<Accuracy>,
    pub by_model: Vec<ModelSummary>,
    pub engines: Vec<EngineSummary>,
    pub quantile_relative_accuracy: f64,
    /// How well the confidence model the policy routed by (the semantic router, or a
    /// stand-in) ranked this run's workflows: per model, the AUC of the confidence it gave
    /// each workflow against whether that model solves it. Absent without a confidence model
    /// or without known outcomes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<ConfidenceSummary>,
    /// The same figures over the steady-state window (warm-up and drain left out), and
    /// whether the load overloads the cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steady: Option<SteadySummary>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConfidenceSummary {
    /// Mean of the per-model AUCs that are defined.
    pub mean_auc: Option<f64>,
    pub by_model: Vec<ModelConfidence>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelConfidence {
    pub model: String,
    /// Workflows assessed with a known outcome on this model.
    pub workflows: u64,
    pub solved: u64,
    /// Probability that a workflow this model solves got a higher confidence than one it
    /// fails (ties count half); None when every workflow has one outcome.
    pub auc: Option<f64>,
}

/// Confidences against outcomes per model, in fixed memory: counts of solved and failed
/// workflows in 4,096 confidence bins (AUC exact but for pairs within one bin of width
/// 1/4096, counted as ties).
#[derive(Debug, Clone)]
pub struct ConfidenceAgg {
    models: Vec<String>,
    /// Per model: solved counts then failed counts, `BINS` each.
    counts: Vec<Vec<u64>>,
}

impl ConfidenceAgg {
    const BINS: usize = 4096;

    pub fn new(models: &[String]) -> Self {
        ConfidenceAgg {
            models: models.to_vec(),
            counts: vec![Vec::new(); models.len()],
        }
    }

    /// Record one workflow's confidence for `model` and whether `model` solves it.
    pub fn add(&mut self, model: &str, confidence: f64, solved: bool) {
        let Some(m) = self.models.iter().position(|x| x == model) else {
            return;
        };
        if !confidence.is_finite() {
            return;
        }
        let c = &mut self.counts[m];
        if c.is_empty() {
            c.resize(2 * Self::BINS, 0);
        }
        let b = ((confidence.clamp(0.0, 1.0) * Self::BINS as f64) as usize).min(Self::BINS - 1);
        c[b + if solved { 0 } else { Self::BINS }] += 1;
    }

    pub fn summary(&self) -> Option<ConfidenceSummary> {
        if self.counts.iter().all(|c| c.is_empty()) {
            return None;
        }
        let by_model: Vec<ModelConfidence> = self
            .models
            .iter()
            .zip(&self.counts)
            .filter(|(_, c)| !c.is_empty())
            .map(|(m, c)| {
                let (pos, neg) = c.split_at(Self::BINS);
                let (p, n): (u64, u64) = (pos.iter().sum(), neg.iter().sum());
                let mut below = 0u64;
                let mut wins = 0.0f64;
                for b in 0..Self::BINS {
                    wins += pos[b] as f64 * (below as f64 + 0.5 * neg[b] as f64);
                    below += neg[b];
                }
                ModelConfidence {
                    model: m.clone(),
                    workflows: p + n,
                    solved: p,
                    auc: (p > 0 && n > 0).then(|| round6(wins / (p as f64 * n as f64))),
                }
            })
            .collect();
        let aucs: Vec<f64> = by_model.iter().filter_map(|m| m.auc).collect();
        Some(ConfidenceSummary {
            mean_auc: (!aucs.is_empty()).then(|| round6(aucs.iter().sum::<f64>() / aucs.len() as f64)),
            by_model,
        })
    }
}

fn accuracy(known: u64, solved: u64) -> Option<Accuracy> {
    (known > 0).then(|| Accuracy {
        known,
        solved,
        accuracy: round6(solved as f64 / known as f64),
    })
}

impl Aggregates {
    pub fn summarize(&self, scenario: &str, seed: u64, policy: String, engines: Vec<EngineSummary>) -> Summary {
        let ms = 1e6;
        let makespan_ns = self.last_finish_ns - self.first_arrival_ns.unwrap_or(0);
        let span = ns_to_secs(makespan_ns.max(1));
        let rate = |n: u64| round6(n as f64 / span);
        let (known, solved) = self
            .by_model
            .iter()
            .fold((0, 0), |(k, s), (_, m)| (k + m.known, s + m.solved));
        Summary {
            scenario: scenario.to_string(),
            seed,
            policy,
            requests: RequestSummary {
                count: self.requests,
                rejected: self.rejected,
                preemptions: self.preemptions,
                ttft_ms: Stats::from_sketch(&self.ttft, ms),
                tpot_ms: Stats::from_sketch(&self.tpot, ms),
                e2e_ms: Stats::from_sketch(&self.e2e, ms),
                queue_ms: Stats::from_sketch(&self.queue, ms),
                failed_attempts: None,
            },
            workflows: WorkflowSummary {
                count: self.workflows,
                failed: self.workflows_failed,
                e2e_s: Stats::from_sketch(&self.wf_e2e, 1e9),
                e2e_per_output_token_ms: Stats::from_sketch(&self.wf_e2e_per_token, ms),
            },
            throughput: Throughput {
                makespan_s: round6(span),
                requests_per_s: rate(self.requests),
                workflows_per_s: rate(self.workflows),
                prompt_tokens_per_s: rate(self.prompt_tokens),
                output_tokens_per_s: rate(self.output_tokens),
            },
            accuracy: accuracy(known, solved),
            by_model: self
                .by_model
                .iter()
                .map(|(name, m)| ModelSummary {
                    model: name.clone(),
                    workflows: m.workflows,
                    share: round6(m.workflows as f64 / self.workflows.max(1) as f64),
                    output_tokens: m.output_tokens,
                    e2e_s: Stats::from_sketch(&m.e2e, 1e9),
                    accuracy: accuracy(m.known, m.solved),
                })
                .collect(),
            engines,
            quantile_relative_accuracy: super::sketch::RELATIVE_ACCURACY,
            confidence: self.confidence.summary(),
            steady: self.steady.as_ref().map(|st| {
                let p50 = |k: &Sketch| Stats::from_sketch(k, 1e9).p50;
                let (a, b) = (p50(&st.first_half), p50(&st.second_half));
                let growth = match (a, b) {
                    (Some(a), Some(b)) if a > 0.0 => round6(b / a),
                    _ => 1.0,
                };
                let span = |(a, b): (Nanos, Nanos)| if b > a { (b - a) as f64 } else { 0.0 };
                let finish_span_ratio = if span(st.arrivals) > 0.0 {
                    round6(span(st.finishes) / span(st.arrivals))
                } else {
                    1.0
                };
                SteadySummary {
                    from_workflow: st.from,
                    to_workflow: st.to,
                    workflows: st.workflows,
                    e2e_s: Stats::from_sketch(&st.e2e, 1e9),
                    e2e_per_output_token_ms: Stats::from_sketch(&st.e2e_per_token, 1e6),
                    accuracy: (st.known > 0).then(|| round6(st.solved as f64 / st.known as f64)),
                    growth,
                    finish_span_ratio,
                    overloaded: growth > OVERLOAD_GROWTH || finish_span_ratio > OVERLOAD_GROWTH,
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binned_auc_is_the_pairwise_auc() {
        // Exact AUC by counting pairs, against the binned one, on values that share no bin.
        let pts: Vec<(f64, bool)> = (0..200)
            .map(|i| {
                let c = ((i * 37) % 200) as f64 / 200.0 + 0.0001;
                (c, (i * 37) % 200 > 60 + (i % 7) * 10)
            })
            .collect();
        let mut agg = ConfidenceAgg::new(&["a".into(), "b".into()]);
        for (c, y) in &pts {
            agg.add("a", *c, *y);
        }
        agg.add("a", f64::NAN, true); // not counted
        agg.add("nobody", 0.5, true); // not a model of the cluster
        let (mut wins, mut pairs) = (0.0, 0.0);
        for (cp, _) in pts.iter().filter(|p| p.1) {
            for (cn, _) in pts.iter().filter(|p| !p.1) {
                pairs += 1.0;
                wins += if cp > cn {
                    1.0
                } else if cp == cn {
                    0.5
                } else {
                    0.0
                };
            }
        }
        let s = agg.summary().unwrap();
        assert_eq!(s.by_model.len(), 1, "model b saw nothing");
        let a = &s.by_model[0];
        assert_eq!(a.workflows, 200);
        assert!(
            (a.auc.unwrap() - wins / pairs).abs() < 1e-6,
            "{:?} vs {}",
            a.auc,
            wins / pairs
        );
        assert_eq!(s.mean_auc, a.auc);
        // One outcome only: no AUC.
        let mut one = ConfidenceAgg::new(&["a".into()]);
        one.add("a", 0.3, true);
        assert_eq!(one.summary().unwrap().by_model[0].auc, None);
        assert!(ConfidenceAgg::new(&["a".into()]).summary().is_none());
    }
}
