//! Scenarios: the YAML a user writes, checked and resolved into what the simulator runs.
//!
//! Reading is two steps (as ripgrep does with flags): [`Scenario`] is the raw, typed document
//! (serde, `deny_unknown_fields`, tagged enums for every choice); [`Scenario::resolve`] checks
//! cross-field rules against the catalogue and produces a [`Resolved`] cluster with KV plans
//! and step-time models. Every error names the field path and what was expected. This module
//! never runs a simulation and never writes files.

pub mod reference;
pub mod yaml;

use crate::engine::kv::{plan_kv, KvPlan, KvSizing};
use crate::engine::{EngineLimits, EnginePolicy};
use crate::error::{Error, Result};
use crate::hw::{Calibration, Catalog, Coefficients, StepTimeModel};
use crate::workload::arrivals::ArrivalSpec;
use crate::workload::synthetic::SyntheticSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The embedded default scenario (`scenarios/default.yaml`).
pub const DEFAULT_SCENARIO: &str = include_str!("../../scenarios/default.yaml");

/// Mean per-request decision cost of the Chimera policy (router + predictor + balancer + STJF),
/// microseconds, as measured by `chimera bench policy` on the 2-core development machine
/// (2026-11-26, shipped predictor, router trained on MATH level 5: p50 7.9, p99 81.4, mean 25.3).
pub const CHIMERA_DECISION_US: f64 = 25.3;

fn default_seed() -> u64 {
    1
}
fn one_u32() -> u32 {
    1
}
fn default_util() -> f64 {
    0.9
}
fn default_non_torch() -> f64 {
    0.5
}
fn default_max_total() -> u32 {
    4096
}
fn default_retries() -> u32 {
    2
}
fn default_max_events() -> u64 {
    2_000_000_000
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default = "default_seed")]
    pub seed: u64,
    pub cluster: Cluster,
    pub workload: Workload,
    pub policy: PolicySpec,
    #[serde(default)]
    pub output: OutputSpec,
    #[serde(default)]
    pub limits: Limits,
    /// Faults the simulation injects in virtual time (the replay meets real ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<FaultSpec>,
}

/// A fault injected in virtual time, on one engine (`engine`) or on every replica of a model
/// (`model`), from `at_s` for `for_s` seconds:
/// - `down` (default): the engine dies (its running and waiting requests are lost, and
///   connections to it are refused) and comes back empty, as a vLLM server killed and restarted;
/// - `slow`: its steps take `factor` times as long (thermal throttling, a noisy neighbour);
/// - `fail`: a `fraction` of the attempts sent to it fail at once, with a `transient` error
///   (an HTTP 5xx: retried) or a `permanent` one (an HTTP 4xx: the workflow fails).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// The engine's name (with `-r<k>` for a replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// Every engine serving this model (instead of `engine`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub at_s: f64,
    pub for_s: f64,
    #[serde(default, skip_serializing_if = "FaultKind::is_down")]
    pub kind: FaultKind,
    /// `slow`: step-time multiplier (> 1 slows down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// `fail`: fraction of attempts that fail, in (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// `fail`: the error's kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<FaultError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    #[default]
    Down,
    Slow,
    Fail,
}

impl FaultKind {
    fn is_down(&self) -> bool {
        *self == FaultKind::Down
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultError {
    Transient,
    Permanent,
}

/// A fault on one engine, in nanoseconds of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fault {
    pub engine: u32,
    pub start_ns: crate::time::Nanos,
    pub end_ns: crate::time::Nanos,
    pub effect: FaultEffect,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultEffect {
    Down,
    Slow(f64),
    Fail { fraction: f64, permanent: bool },
}

impl Resolved {
    /// The scenario's faults, one per engine they hit, in the order written.
    pub fn faults(&self) -> Vec<Fault> {
        let mut out = Vec::new();
        for f in &self.scenario.faults {
            let effect = match f.kind {
                FaultKind::Down => FaultEffect::Down,
                FaultKind::Slow => FaultEffect::Slow(f.factor.unwrap_or(1.0)),
                FaultKind::Fail => FaultEffect::Fail {
                    fraction: f.fraction.unwrap_or(1.0),
                    permanent: f.error == Some(FaultError::Permanent),
                },
            };
            let start_ns = crate::time::secs_to_ns(f.at_s);
            let end_ns = start_ns + crate::time::secs_to_ns(f.for_s);
            for (i, e) in self.engines.iter().enumerate() {
                let hit = match (&f.engine, &f.model) {
                    (Some(n), _) => *n == e.name,
                    (None, Some(m)) => *m == e.model,
                    (None, None) => false,
                };
                if hit {
                    out.push(Fault {
                        engine: i as u32,
                        start_ns,
                        end_ns,
                        effect,
                    });
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub engines: Vec<EngineSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSpec {
    /// Name in results; default `<model>-<index>`. With replicas, `-r<k>` is appended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub model: String,
    pub gpu: String,
    #[serde(default = "one_u32")]
    pub tensor_parallel: u32,
    #[serde(default = "one_u32")]
    pub replicas: u32,
    /// Token budget per step; default as vLLM's OpenAI server picks it for the GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_num_batched_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_num_seqs: Option<u32>,
    #[serde(default = "default_util")]
    pub gpu_memory_utilization: f64,
    /// Default: the model's max_position_embeddings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u32>,
    #[serde(default)]
    pub scheduling: EnginePolicy,
    /// CUDA context, NCCL and other memory outside PyTorch's allocator, GiB per GPU.
    #[serde(default = "default_non_torch")]
    pub non_torch_gib: f64,
    /// A calibration file (path relative to the scenario file), `builtin:<name>`, or `auto` (the
    /// calibration shipped for the engine's GPU, else the roofline defaults); default: roofline
    /// defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<String>,
    /// vLLM's automatic prefix caching (`--enable-prefix-caching`, on by default in v1).
    #[serde(default = "yes")]
    pub enable_prefix_caching: bool,
    /// vLLM's `--enforce-eager`: no CUDA graphs (every step pays per-layer launch costs).
    #[serde(default)]
    pub enforce_eager: bool,
    /// vLLM's `--block-size`: tokens per KV block (default 16; vLLM's CPU backend needs 32 or more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// vLLM's `data_parallel_size` for a mixture-of-experts model: this engine is one of
    /// `expert_parallel` data-parallel ranks whose MoE layers span every rank and step
    /// together (give `replicas` as many ranks). vLLM splits the routed experts whole across
    /// the ranks with `enable_expert_parallel` and shards every expert across them without
    /// (`FusedMoEParallelConfig`: tensor parallelism flattened across data parallelism): the
    /// same bytes per GPU, modelled alike.
    #[serde(default = "one_u32")]
    pub expert_parallel: u32,
    /// Requests reach the engine through vLLM's OpenAI-compatible API server, whose front-end
    /// time (HTTP, tokenisation, hand-off, the stream back) clients see; false for an engine
    /// driven in-process (vLLM's `AsyncLLM`), timed from its engine core's queue.
    #[serde(default = "yes")]
    pub api_server: bool,
}

fn yes() -> bool {
    true
}

/// The workload. Read by hand (see `TryFrom<Value>`) rather than as a serde internally
/// tagged enum, so that errors inside it keep their field path.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", try_from = "serde_json::Value")]
pub enum Workload {
    Synthetic(SyntheticSpec),
    AzureTrace(AzureTraceSpec),
    /// A workflow trace file (`chimera-trace/v1`, see traces/README.md).
    Trace(TraceFileSpec),
    /// APPS/MATH workflows generated as they arrive from the fitted parameters.
    Generated(GeneratedSpec),
    /// Single LLM calls as serving benchmarks send them (shared-prefix groups, fixed lengths
    /// or a per-request trace; constant, Poisson, closed-loop or traced arrivals).
    Serving(crate::workload::serving::ServingSpec),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceFileSpec {
    /// The trace, relative to the scenario file.
    pub path: String,
    /// Poisson or Gamma arrivals (traces carry no timestamps).
    pub arrivals: ArrivalSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Start again from the first workflow after the last (needs `limit`).
    #[serde(default)]
    pub cycle: bool,
    /// Visit workflows in an order shuffled by the seed instead of file order.
    #[serde(default)]
    pub shuffle: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratedSpec {
    /// Weight of each task family (`apps`, `math`); normalised.
    pub tasks: BTreeMap<String, f64>,
    pub workflows: u64,
    pub arrivals: ArrivalSpec,
    /// The data folder (../shared/data layout): workflows are then real MATH level-5 and APPS
    /// problems with their text (which a semantic router reads), each with its fitted
    /// difficulty and length. Relative to the scenario file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problems: Option<std::path::PathBuf>,
    /// Multiplies every tool delay between stages (1 as fitted, which is an assumption; 0 for
    /// none): for ablations.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub tool_delay_scale: f64,
}

fn one() -> f64 {
    1.0
}

fn is_one(x: &f64) -> bool {
    *x == 1.0
}

/// An encoder router reads each workflow's text through its encoder (the `encoder` build
/// feature), loaded once here; the policy core only calls it.
#[cfg(feature = "encoder")]
fn with_encoder(r: crate::router::Router, dir: &Path) -> Result<crate::router::Router> {
    let enc = crate::encoder::TextEncoder::load(dir).map_err(|e| e.context("policy.confidence.encoder"))?;
    let dims = 1usize << r.model.features.buckets_log2;
    if enc.dims > dims {
        return Err(Error::bad(format!(
            "policy.confidence.encoder: {} embeds in {} dimensions, but the router's heads take at most {dims}; use the encoder the router was trained with",
            dir.display(),
            enc.dims
        )));
    }
    Ok(r.with_embedder(std::sync::Arc::new(move |t: &str| enc.embed(t).ok())))
}

#[cfg(not(feature = "encoder"))]
fn with_encoder(_r: crate::router::Router, dir: &Path) -> Result<crate::router::Router> {
    Err(Error::bad(format!(
        "policy.confidence: an encoder router (encoder {}) needs a build with the `encoder` feature (cargo build --release --features encoder)",
        dir.display()
    )))
}

const KINDS: &str = "`synthetic`, `azure_trace`, `trace`, `generated`, `serving`";

impl TryFrom<serde_json::Value> for Workload {
    type Error = String;
    fn try_from(v: serde_json::Value) -> std::result::Result<Self, String> {
        let serde_json::Value::Object(mut m) = v else {
            return Err(format!("expected a map with `kind:` one of {KINDS}"));
        };
        let kind = match m.remove("kind") {
            Some(serde_json::Value::String(k)) => k,
            Some(_) => return Err(format!("@kind: expected a string, one of {KINDS}")),
            None => return Err(format!("missing field `kind`, expected one of {KINDS}")),
        };
        let rest = serde_json::Value::Object(m);
        match kind.as_str() {
            "synthetic" => yaml::nested(rest).map(Workload::Synthetic),
            "azure_trace" => yaml::nested(rest).map(Workload::AzureTrace),
            "trace" => yaml::nested(rest).map(Workload::Trace),
            "generated" => yaml::nested(rest).map(Workload::Generated),
            "serving" => yaml::nested(rest).map(Workload::Serving),
            other => Err(format!("@kind: unknown variant `{other}`, expected one of {KINDS}")),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureTraceSpec {
    /// Azure-format CSV, relative to the scenario file.
    pub path: String,
    /// Use only the first `limit` rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Start again from the first row when the file ends before `limit`.
    #[serde(default)]
    pub cycle: bool,
    /// Cap on prompt + output tokens per request (prompt cut first).
    #[serde(default = "default_max_total")]
    pub max_total_tokens: u32,
    pub arrivals: ArrivalSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub routing: RoutingSpec,
    #[serde(default)]
    pub priority: PrioritySpec,
    /// Hold requests in the policy core while an engine has this many in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight_per_engine: Option<u32>,
    /// Time charged for each routing/scheduling decision, microseconds. Default: the mean cost
    /// `chimera bench policy` measured for the Chimera policy (CHIMERA_DECISION_US) when routing
    /// is `chimera`, else 0 (the baselines' decisions cost well under a microsecond).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_delay_us: Option<f64>,
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<ConfidenceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<LengthSpec>,
    /// Aging in the middleware queue: a held request passed over this many times goes first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub middleware_starvation: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RoutingSpec {
    /// Each workflow goes to a model with the given probability (must sum to 1).
    FixedFraction {
        fractions: BTreeMap<String, f64>,
    },
    // Empty struct variants, not unit ones: serde then refuses unknown fields beside `kind`.
    RoundRobin {},
    LeastOutstanding {},
    /// The Chimera load balancer (needs `policy.length` and `policy.confidence`).
    Chimera {
        slack: crate::policy::chimera::Slack,
        #[serde(default)]
        min_confidence_gain: f64,
    },
}

/// Where per-model confidences come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ConfidenceSpec {
    /// A trained semantic router file (`chimera router train`), relative to the scenario; an
    /// encoder router also reads the encoder folder it was trained with (`encoder`, relative
    /// to the scenario; default: the folder in the router's provenance).
    Router {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        encoder: Option<String>,
    },
    /// Each model's fixed accuracy.
    Prior { accuracy: BTreeMap<String, f64> },
    /// The true outcome (simulation only).
    Oracle,
    /// The true outcome with noise giving this AUC (simulation only).
    NoisyOracle { auc: f64 },
}

/// Where predicted lengths come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LengthSpec {
    /// A trained predictor file (`chimera predictor train`), relative to the scenario.
    Qrf {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quantile: Option<f64>,
    },
    /// True lengths (simulation only).
    Oracle,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrioritySpec {
    /// Priority 0 for all: arrival order.
    #[default]
    Fcfs,
    /// Earlier workflows first (needs `scheduling: priority` to matter).
    WorkflowOrder,
    /// Shortest total job first: the workflow's predicted remaining output (needs `length`).
    Stjf,
    /// Shortest job first on the current call's predicted output (needs `length`).
    Sjf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Record one engines.parquet row every N steps of each engine (1 = every step, 0 = none).
    #[serde(default = "one_u32")]
    pub engine_log_every_steps: u32,
    /// Write `decisions.jsonl`: every input the policy core got and the decisions it made, in
    /// the replay's journal format (costs memory per request).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub journal: bool,
}

impl Default for OutputSpec {
    fn default() -> Self {
        OutputSpec {
            engine_log_every_steps: 1,
            journal: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// The event loop stops with an error past this many events.
    #[serde(default = "default_max_events")]
    pub max_events: u64,
    /// Check engine and conservation invariants after every step (slower; tests turn it on).
    #[serde(default)]
    pub check_invariants: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_events: default_max_events(),
            check_invariants: false,
        }
    }
}

/// One engine replica, resolved.
#[derive(Debug, Clone)]
pub struct ResolvedEngine {
    pub name: String,
    pub model: String,
    pub gpu: String,
    pub tensor_parallel: u32,
    pub expert_parallel: u32,
    /// Requests pass vLLM's API server (its front-end time counts).
    pub api_server: bool,
    /// Front-end time added before a request reaches the engine (0 without an API server).
    pub frontend_ns: crate::time::Nanos,
    pub limits: EngineLimits,
    pub kv: KvPlan,
    pub steptime: StepTimeModel,
    /// Where the step-time coefficients came from.
    pub step_time_source: StepTimeSource,
    pub model_provenance: String,
    pub gpu_provenance: String,
}

impl ResolvedEngine {
    /// Price this engine's steps with other coefficients (fits): the step model rebuilt on the
    /// same model, GPU, parallelism and CUDA-graph setting, the front end from `c`.
    pub fn set_coefficients(&mut self, c: Coefficients) -> Result<()> {
        let cat = Catalog::builtin();
        let (m, g) = (cat.model(&self.model)?, cat.gpu(&self.gpu)?);
        let cap = self.steptime.max_capture();
        self.steptime = engine_steptime(m, g, self.tensor_parallel, self.expert_parallel, c, cap);
        self.frontend_ns = frontend_ns(self.api_server, &c);
        Ok(())
    }
}

/// The step model of one engine: its model, GPU, parallelism, coefficients and CUDA graphs.
fn engine_steptime(
    model: &crate::hw::ModelSpec,
    gpu: &crate::hw::GpuSpec,
    tp: u32,
    ep: u32,
    c: Coefficients,
    max_capture: u32,
) -> StepTimeModel {
    StepTimeModel::new(model, gpu, tp, c)
        .with_cuda_graphs(max_capture)
        .with_expert_parallel(ep)
}

/// The API server's front-end time a request pays before reaching the engine (none in-process).
fn frontend_ns(api_server: bool, c: &Coefficients) -> crate::time::Nanos {
    if api_server {
        (c.frontend_us * 1e3).round() as crate::time::Nanos
    } else {
        0
    }
}

/// Where an engine's step-time coefficients came from (`manifest.json` keeps it whole; the
/// summary says it in a word, [`StepTimeSource::label`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StepTimeSource {
    /// Datasheet figures and published default efficiencies: not measured.
    RooflineDefault { note: String },
    /// A calibration file: `provenance.kind` says measured, derived or datasheet.
    Calibration {
        path: String,
        provenance: serde_json::Value,
        fit: Option<crate::hw::calibration::FitQuality>,
    },
}

impl StepTimeSource {
    /// The provenance kind of a calibration (`measured`, `derived`, `datasheet`).
    pub fn provenance_kind(&self) -> Option<&str> {
        match self {
            StepTimeSource::Calibration { provenance, .. } => provenance["kind"].as_str(),
            StepTimeSource::RooflineDefault { .. } => None,
        }
    }

    /// In a word: `roofline-default`, `calibration (measured)`, `calibration (derived)`, ...
    pub fn label(&self) -> String {
        match self.provenance_kind() {
            Some(k) => format!("calibration ({k})"),
            None => match self {
                StepTimeSource::RooflineDefault { .. } => "roofline-default".into(),
                StepTimeSource::Calibration { .. } => "calibration".into(),
            },
        }
    }

    /// What error to expect of the step times, in words, from the calibration's own checks.
    pub fn expected_error(&self) -> String {
        match self {
            StepTimeSource::RooflineDefault { .. } => "unknown: no measurement behind these step times".into(),
            StepTimeSource::Calibration { fit: Some(f), .. } => f.expected_error().unwrap_or_else(|| {
                format!(
                    "in sample only: median {:.1} %, p90 {:.1} % over {} points (no cross-validation recorded)",
                    100.0 * f.median_rel_err,
                    100.0 * f.p90_rel_err,
                    f.points
                )
            }),
            StepTimeSource::Calibration { fit: None, .. } => {
                "unknown: the calibration records no fit of its own (derived or datasheet)".into()
            }
        }
    }

    pub fn is_derived(&self) -> bool {
        self.provenance_kind() == Some("derived")
    }
    pub fn is_default(&self) -> bool {
        matches!(self, StepTimeSource::RooflineDefault { .. })
    }
}

/// A scenario checked and ready to run.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub scenario: Scenario,
    pub engines: Vec<ResolvedEngine>,
    /// Distinct models, in order of first appearance.
    pub models: Vec<String>,
    /// Directory relative paths are resolved against.
    pub base_dir: PathBuf,
    /// Loaded policy models (length predictor, semantic router), when the policy uses them.
    pub predictor: Option<std::sync::Arc<crate::predictor::LengthPredictor>>,
    pub router: Option<std::sync::Arc<crate::router::Router>>,
}

fn check_fault(i: usize, f: &FaultSpec, engines: &[ResolvedEngine]) -> Result<()> {
    match (&f.engine, &f.model) {
        (Some(n), None) => {
            if !engines.iter().any(|e| e.name == *n) {
                let names: Vec<&str> = engines.iter().map(|e| e.name.as_str()).collect();
                return Err(Error::bad(format!(
                    "faults[{i}].engine: no engine named `{n}`; engines: {}",
                    names.join(", ")
                )));
            }
        }
        (None, Some(m)) => {
            if !engines.iter().any(|e| e.model == *m) {
                let mut models: Vec<&str> = engines.iter().map(|e| e.model.as_str()).collect();
                models.dedup();
                return Err(Error::bad(format!(
                    "faults[{i}].model: no engine serves `{m}`; models: {}",
                    models.join(", ")
                )));
            }
        }
        _ => {
            return Err(Error::bad(format!(
                "faults[{i}]: name either `engine` (one engine) or `model` (all its replicas), not both or neither"
            )))
        }
    }
    if !(f.at_s.is_finite() && (0.0..=1e7).contains(&f.at_s)) {
        return Err(Error::bad(format!(
            "faults[{i}].at_s: expected a time between 0 and 1e7 s, got {}",
            f.at_s
        )));
    }
    if !(f.for_s.is_finite() && f.for_s > 0.0 && f.for_s <= 1e6) {
        return Err(Error::bad(format!(
            "faults[{i}].for_s: expected 0 < for_s <= 1e6 s, got {}",
            f.for_s
        )));
    }
    let (factor, fraction, error) = (f.factor.is_some(), f.fraction.is_some(), f.error.is_some());
    match f.kind {
        FaultKind::Down if factor || fraction || error => Err(Error::bad(format!(
            "faults[{i}]: `factor`, `fraction` and `error` belong to kind `slow` or `fail`, not `down`"
        ))),
        FaultKind::Slow => match f.factor {
            _ if fraction || error => Err(Error::bad(format!(
                "faults[{i}]: `fraction` and `error` belong to kind `fail`, not `slow`"
            ))),
            Some(x) if x.is_finite() && (0.01..=1000.0).contains(&x) => Ok(()),
            Some(x) => Err(Error::bad(format!(
                "faults[{i}].factor: expected a step-time multiplier between 0.01 and 1000, got {x}"
            ))),
            None => Err(Error::bad(format!(
                "faults[{i}].factor: kind `slow` needs a step-time multiplier (e.g. 2.0)"
            ))),
        },
        FaultKind::Fail => match f.fraction {
            _ if factor => Err(Error::bad(format!(
                "faults[{i}]: `factor` belongs to kind `slow`, not `fail`"
            ))),
            Some(x) if x.is_finite() && x > 0.0 && x <= 1.0 => Ok(()),
            Some(x) => Err(Error::bad(format!(
                "faults[{i}].fraction: expected a fraction of attempts in (0, 1], got {x}"
            ))),
            None => Err(Error::bad(format!(
                "faults[{i}].fraction: kind `fail` needs the fraction of attempts that fail (e.g. 0.1)"
            ))),
        },
        _ => Ok(()),
    }
}

/// Load a scenario file with overrides, and resolve it.
pub fn load(path: &Path, sets: &[String]) -> Result<Resolved> {
    let text = crate::input::read_text(&path)?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    load_str(&text, sets, &base).map_err(|e| e.context(path.display()))
}

/// Load scenario text (relative paths against `base_dir`) with overrides, and resolve it.
pub fn load_str(text: &str, sets: &[String], base_dir: &Path) -> Result<Resolved> {
    let mut tree = yaml::parse_tree(text)?;
    for s in sets {
        yaml::apply_set(&mut tree, s)?;
    }
    let sc: Scenario = yaml::from_tree(tree)?;
    sc.resolve(base_dir)
}

type PolicyModels = (
    Option<std::sync::Arc<crate::predictor::LengthPredictor>>,
    Option<std::sync::Arc<crate::router::Router>>,
);

/// Check the policy's cross-field rules and load the model files it names.
fn resolve_policy_models(p: &mut PolicySpec, models: &[String], base: &Path) -> Result<PolicyModels> {
    let needs_length = matches!(p.priority, PrioritySpec::Stjf | PrioritySpec::Sjf)
        || matches!(p.routing, RoutingSpec::Chimera { .. });
    if needs_length && p.length.is_none() {
        return Err(Error::bad(
            "policy.length: chimera routing and stjf/sjf priorities need a length model: {kind: qrf, path: PREDICTOR.json} or {kind: oracle}",
        ));
    }
    if let RoutingSpec::Chimera {
        slack,
        min_confidence_gain,
    } = &p.routing
    {
        if p.confidence.is_none() {
            return Err(Error::bad(
                "policy.confidence: chimera routing needs confidences: {kind: router, path: ROUTER.json}, {kind: prior, accuracy: {...}}, {kind: oracle} or {kind: noisy_oracle, auc: A}",
            ));
        }
        let ok = match slack {
            crate::policy::chimera::Slack::Multiplicative { value } => *value >= 0.0 && value.is_finite(),
            crate::policy::chimera::Slack::Additive { seconds } => *seconds >= 0.0 && seconds.is_finite(),
        };
        if !ok {
            return Err(Error::bad("policy.routing.slack: expected a non-negative number"));
        }
        if !min_confidence_gain.is_finite() {
            return Err(Error::bad("policy.routing.min_confidence_gain: expected a number"));
        }
    }
    if p.middleware_starvation == Some(0) {
        return Err(Error::bad("policy.middleware_starvation: expected at least 1"));
    }
    if let Some(d) = p.decision_delay_us {
        if !(0.0..=1e9).contains(&d) {
            return Err(Error::bad(format!(
                "policy.decision_delay_us: expected 0 to 1e9 microseconds, got {d:e}"
            )));
        }
    }
    let mut predictor = None;
    if let Some(LengthSpec::Qrf { path, quantile }) = &p.length {
        let f = base.join(path);
        let text = crate::input::read_text(&f).map_err(|e| Error::bad(format!("policy.length.path: {e}")))?;
        let mut lp = crate::predictor::LengthPredictor::from_json(&text)
            .map_err(|e| Error::bad(format!("policy.length.path: {}: {e}", f.display())))?;
        if let Some(q) = quantile {
            if !(0.0..=1.0).contains(q) {
                return Err(Error::bad(format!("policy.length.quantile: expected 0..=1, got {q}")));
            }
            lp.quantile = *q;
        }
        predictor = Some(std::sync::Arc::new(lp));
    }
    let mut router = None;
    match &p.confidence {
        Some(ConfidenceSpec::Router { path, encoder }) => {
            let f = base.join(path);
            let text = crate::input::read_text(&f).map_err(|e| Error::bad(format!("policy.confidence.path: {e}")))?;
            let m = crate::router::RouterModel::from_json(&text)
                .map_err(|e| Error::bad(format!("policy.confidence.path: {}: {e}", f.display())))?;
            let enc_dir = match (m.is_encoder(), encoder) {
                (false, Some(_)) => {
                    return Err(Error::bad(format!(
                        "policy.confidence.encoder: {} is a text-feature router; it reads no embeddings (remove `encoder`)",
                        f.display()
                    )))
                }
                (false, None) => None,
                (true, Some(e)) => Some(base.join(e)),
                (true, None) => Some(
                    m.provenance
                        .get("encoder")
                        .and_then(|v| v.as_str())
                        .map(std::path::PathBuf::from)
                        .ok_or_else(|| {
                            Error::bad(format!(
                                "policy.confidence.encoder: {} is an encoder router whose provenance names no encoder; give `encoder: DIR`",
                                f.display()
                            ))
                        })?,
                ),
            };
            for model in models {
                if !m.models.contains(model) {
                    return Err(Error::bad(format!(
                        "policy.confidence.path: router {} has no head for model {model}; it has {}",
                        f.display(),
                        m.models.join(", ")
                    )));
                }
            }
            let r = crate::router::Router::new(m);
            router = Some(std::sync::Arc::new(match enc_dir {
                None => r,
                Some(dir) => with_encoder(r, &dir)?,
            }));
        }
        Some(ConfidenceSpec::NoisyOracle { auc }) if !(*auc > 0.5 && *auc < 1.0) => {
            return Err(Error::bad(format!(
                "policy.confidence.auc: expected 0.5 < auc < 1, got {auc}"
            )));
        }
        Some(ConfidenceSpec::Prior { accuracy }) => {
            for m in models {
                match accuracy.get(m) {
                    Some(a) if (0.0..=1.0).contains(a) => {}
                    Some(a) => {
                        return Err(Error::bad(format!(
                            "policy.confidence.accuracy.{m}: expected 0..=1, got {a}"
                        )))
                    }
                    None => return Err(Error::bad(format!("policy.confidence.accuracy: missing model {m}"))),
                }
            }
        }
        _ => {}
    }
    Ok((predictor, router))
}

fn renewal_only(a: &ArrivalSpec) -> Result<()> {
    a.validate("workload.arrivals")?;
    if let ArrivalSpec::Trace { .. } = a {
        return Err(Error::bad(
            "workload.arrivals.process: workflow traces carry no timestamps; use poisson or gamma",
        ));
    }
    Ok(())
}

/// vLLM's OpenAI-server defaults: 8192 tokens and 1024 sequences on cards of 70 GiB or more
/// other than the A100, else 2048 and 256.
fn vllm_defaults(gpu: &crate::hw::GpuSpec) -> (u32, u32) {
    if gpu.memory_gib >= 70.0 && !gpu.name.to_ascii_lowercase().contains("a100") {
        (8192, 1024)
    } else {
        (2048, 256)
    }
}

impl Scenario {
    pub fn resolve(self, base_dir: &Path) -> Result<Resolved> {
        let cat = Catalog::builtin();
        if self.cluster.engines.is_empty() {
            return Err(Error::bad("cluster.engines: expected at least one engine"));
        }
        let mut engines = Vec::new();
        let mut models: Vec<String> = Vec::new();
        for (i, e) in self.cluster.engines.iter().enumerate() {
            let p = format!("cluster.engines[{i}]");
            let model = cat.model(&e.model).map_err(|x| x.context(format!("{p}.model")))?;
            let gpu = cat.gpu(&e.gpu).map_err(|x| x.context(format!("{p}.gpu")))?;
            if ![1, 2, 4, 8].contains(&e.tensor_parallel) {
                return Err(Error::bad(format!(
                    "{p}.tensor_parallel: expected 1, 2, 4 or 8, got {}",
                    e.tensor_parallel
                )));
            }
            if ![1, 2, 4, 8, 16].contains(&e.expert_parallel) {
                return Err(Error::bad(format!(
                    "{p}.expert_parallel: expected 1, 2, 4, 8 or 16, got {}",
                    e.expert_parallel
                )));
            }
            if e.expert_parallel > 1 && !model.is_moe() {
                return Err(Error::bad(format!(
                    "{p}.expert_parallel: {} is a dense model (no experts to split); expected 1",
                    model.name
                )));
            }
            if model.heads % e.tensor_parallel as u64 != 0 {
                return Err(Error::bad(format!(
                    "{p}.tensor_parallel: {} attention heads of {} do not split over {} GPUs",
                    model.heads, model.name, e.tensor_parallel
                )));
            }
            if e.replicas == 0 || e.replicas > 1024 {
                return Err(Error::bad(format!(
                    "{p}.replicas: expected 1..=1024, got {}",
                    e.replicas
                )));
            }
            if !(e.gpu_memory_utilization > 0.0 && e.gpu_memory_utilization <= 1.0) {
                return Err(Error::bad(format!(
                    "{p}.gpu_memory_utilization: expected a fraction in (0, 1], got {}",
                    e.gpu_memory_utilization
                )));
            }
            if !(e.non_torch_gib >= 0.0 && e.non_torch_gib.is_finite()) {
                return Err(Error::bad(format!(
                    "{p}.non_torch_gib: expected a non-negative number, got {}",
                    e.non_torch_gib
                )));
            }
            let (d_tokens, d_seqs) = vllm_defaults(gpu);
            let max_len = e.max_model_len.unwrap_or(model.max_position);
            if max_len < 2 || max_len > model.max_position {
                return Err(Error::bad(format!(
                    "{p}.max_model_len: expected 2..={} (the max_position_embeddings of {}), got {max_len}",
                    model.max_position, model.name
                )));
            }
            let budget = e.max_num_batched_tokens.unwrap_or(d_tokens);
            let seqs = e.max_num_seqs.unwrap_or(d_seqs);
            if budget == 0 {
                return Err(Error::bad(format!("{p}.max_num_batched_tokens: expected at least 1")));
            }
            if seqs == 0 {
                return Err(Error::bad(format!("{p}.max_num_seqs: expected at least 1")));
            }
            let block_size = e.block_size.unwrap_or(crate::engine::kv::DEFAULT_BLOCK_SIZE);
            if !crate::engine::kv::BLOCK_SIZES.contains(&block_size) {
                return Err(Error::bad(format!(
                    "{p}.block_size: {block_size} is not one of {:?}",
                    crate::engine::kv::BLOCK_SIZES
                )));
            }
            let kv = plan_kv(&KvSizing {
                model,
                gpu,
                tensor_parallel: e.tensor_parallel,
                expert_parallel: e.expert_parallel,
                gpu_memory_utilization: e.gpu_memory_utilization,
                max_num_batched_tokens: budget,
                max_model_len: max_len,
                non_torch_gib: e.non_torch_gib,
                block_size,
            })
            .map_err(|x| x.context(&p))?;
            let auto = e.calibration.as_deref() == Some("auto");
            let spec = match e.calibration.as_deref() {
                Some("auto") => Some(format!(
                    "builtin:{}",
                    Calibration::auto_for(&gpu.name).unwrap_or(Calibration::AUTO_FALLBACK)
                )),
                other => other.map(String::from),
            };
            let (coeffs, source) = match &spec {
                // `auto` on a GPU the global serving fit was not measured on: its efficiencies
                // (fractions of peak) and fixed costs on this GPU's datasheet; the fit's
                // leave-one-GPU-out error is what to expect.
                Some(c) if auto && Calibration::auto_for(&gpu.name).is_none() => {
                    let (cal, origin) =
                        Calibration::resolve(c, base_dir).map_err(|x| x.context(format!("{p}.calibration")))?;
                    let measured_here = cal.measured_gpus().contains(&gpu.name) || cal.gpu == gpu.name;
                    let provenance = if measured_here {
                        serde_json::to_value(&cal.provenance).expect("provenance serialises")
                    } else {
                        serde_json::json!({"kind": "derived", "source": format!("calibration: auto: the global vLLM serving fit ({}), measured on {}, on {}'s datasheet figures; not measured on {}", origin, cal.measured_gpus().join(", "), gpu.name, gpu.name), "from": cal.provenance})
                    };
                    (
                        cal.coefficients,
                        StepTimeSource::Calibration {
                            path: origin,
                            provenance,
                            fit: cal.fit,
                        },
                    )
                }
                None => (
                    Coefficients::default(),
                    StepTimeSource::RooflineDefault {
                        note: if e.calibration.is_some() {
                            "no calibration ships for this GPU (calibration: auto); datasheet figures and published default efficiencies; not measured"
                        } else {
                            "datasheet figures and published default efficiencies; not measured"
                        }
                        .into(),
                    },
                ),
                Some(c) => {
                    let (cal, origin) =
                        Calibration::resolve(c, base_dir).map_err(|x| x.context(format!("{p}.calibration")))?;
                    cal.check_applies(&origin, &gpu.name, &model.name, e.tensor_parallel)
                        .map_err(|x| x.context(format!("{p}.calibration")))?;
                    (
                        cal.coefficients,
                        StepTimeSource::Calibration {
                            path: origin,
                            provenance: serde_json::to_value(&cal.provenance).expect("provenance serialises"),
                            fit: cal.fit,
                        },
                    )
                }
            };
            let max_capture = if e.enforce_eager {
                0
            } else {
                crate::hw::steptime::default_max_capture(seqs)
            };
            let steptime = engine_steptime(model, gpu, e.tensor_parallel, e.expert_parallel, coeffs, max_capture);
            let base_name = e
                .name
                .clone()
                .unwrap_or_else(|| format!("{}-{i}", model.name.to_ascii_lowercase()));
            for r in 0..e.replicas {
                let name = if e.replicas > 1 {
                    format!("{base_name}-r{r}")
                } else {
                    base_name.clone()
                };
                if engines.iter().any(|x: &ResolvedEngine| x.name == name) {
                    return Err(Error::bad(format!("{p}.name: engine name `{name}` is used twice")));
                }
                engines.push(ResolvedEngine {
                    name,
                    model: model.name.clone(),
                    gpu: gpu.name.clone(),
                    tensor_parallel: e.tensor_parallel,
                    expert_parallel: e.expert_parallel,
                    api_server: e.api_server,
                    frontend_ns: frontend_ns(e.api_server, &coeffs),
                    limits: EngineLimits {
                        max_num_batched_tokens: budget,
                        max_num_seqs: seqs,
                        max_model_len: max_len,
                        policy: e.scheduling,
                        prefix_caching: e.enable_prefix_caching,
                        block_size,
                    },
                    kv: kv.clone(),
                    steptime: steptime.clone(),
                    step_time_source: source.clone(),
                    model_provenance: model.provenance.clone(),
                    gpu_provenance: gpu.provenance.clone(),
                });
            }
            if !models.contains(&model.name) {
                models.push(model.name.clone());
            }
        }
        // Canonicalise model names used elsewhere to catalogue names.
        let mut sc = self;
        let canon = |m: &str, path: &str| -> Result<String> {
            let name = cat.model(m).map_err(|x| x.context(path))?.name.clone();
            if !models.contains(&name) {
                return Err(Error::bad(format!(
                    "{path}: no engine serves model `{m}`; models in this cluster: {}",
                    models.join(", ")
                )));
            }
            Ok(name)
        };
        if let RoutingSpec::FixedFraction { fractions } = &mut sc.policy.routing {
            let mut fixed = BTreeMap::new();
            for (m, f) in fractions.iter() {
                let path = format!("policy.routing.fractions.{m}");
                if !(0.0..=1.0).contains(f) {
                    return Err(Error::bad(format!("{path}: expected a fraction in [0, 1], got {f}")));
                }
                fixed.insert(canon(m, &path)?, *f);
            }
            let sum: f64 = fixed.values().sum();
            if (sum - 1.0).abs() > 1e-6 {
                return Err(Error::bad(format!(
                    "policy.routing.fractions: the fractions must sum to 1, they sum to {sum}"
                )));
            }
            *fractions = fixed;
        }
        if let Some(k) = sc.policy.max_in_flight_per_engine {
            if k == 0 {
                return Err(Error::bad("policy.max_in_flight_per_engine: expected at least 1"));
            }
        }
        if sc.policy.decision_delay_us.is_none() {
            let chimera = matches!(sc.policy.routing, RoutingSpec::Chimera { .. });
            sc.policy.decision_delay_us = Some(if chimera { CHIMERA_DECISION_US } else { 0.0 });
        }
        let delay = sc.policy.decision_delay_us.unwrap_or(0.0);
        if !(delay >= 0.0 && delay.is_finite()) {
            return Err(Error::bad(format!(
                "policy.decision_delay_us: expected a non-negative number, got {}",
                delay
            )));
        }
        let min_len = engines.iter().map(|e| e.limits.max_model_len).min().expect("non-empty");
        match &mut sc.workload {
            Workload::Serving(s) => {
                s.validate("workload")?;
                if let crate::workload::serving::RequestShape::Trace { path } = &s.requests {
                    crate::workload::serving::read_trace(&base_dir.join(path))
                        .map_err(|e| e.context("workload.requests.path"))?;
                }
            }
            Workload::Synthetic(s) => {
                for map in [&mut s.output_scale, &mut s.success_probability] {
                    let mut fixed = BTreeMap::new();
                    for (m, v) in map.iter() {
                        let name = cat.model(m).map(|x| x.name.clone()).unwrap_or_else(|_| m.clone());
                        fixed.insert(name, *v);
                    }
                    *map = fixed;
                }
                s.validate("workload", &models)?;
                if s.max_prompt_tokens >= min_len {
                    return Err(Error::bad(format!(
                        "workload.max_prompt_tokens: {} must be below the smallest max_model_len in the cluster ({min_len})",
                        s.max_prompt_tokens
                    )));
                }
                if let ArrivalSpec::Trace { path, .. } = &s.arrivals {
                    match path {
                        None => return Err(Error::bad(
                            "workload.arrivals.path: trace arrivals for a synthetic workload need an Azure-format CSV",
                        )),
                        Some(p) if !base_dir.join(p).exists() => {
                            return Err(Error::bad(format!(
                                "workload.arrivals.path: {} does not exist",
                                base_dir.join(p).display()
                            )))
                        }
                        _ => {}
                    }
                }
            }
            Workload::Trace(t) => {
                renewal_only(&t.arrivals)?;
                let p = base_dir.join(&t.path);
                let trace = crate::trace::read_trace(&p)?;
                crate::trace::source::check_models(
                    &trace.models,
                    &models,
                    &format!("workload.path: trace {}", p.display()),
                )?;
                if t.cycle && t.limit.is_none() {
                    return Err(Error::bad("workload.limit: `cycle: true` needs a limit"));
                }
                if t.limit == Some(0) {
                    return Err(Error::bad(
                        "workload.limit: expected at least 1 workflow (leave it out for the whole trace)",
                    ));
                }
                let longest = trace
                    .workflows
                    .iter()
                    .flat_map(|w| &w.plans)
                    .flat_map(|p| &p.stages)
                    .map(|s| s.prompt_tokens)
                    .max()
                    .unwrap_or(0);
                if longest >= min_len {
                    return Err(Error::bad(format!(
                        "workload.path: trace {} has a prompt of {longest} tokens, not below the smallest max_model_len ({min_len})",
                        p.display()
                    )));
                }
            }
            Workload::Generated(g) => {
                renewal_only(&g.arrivals)?;
                if g.workflows == 0 {
                    return Err(Error::bad("workload.workflows: expected at least 1"));
                }
                if g.tasks.is_empty() {
                    return Err(Error::bad(
                        "workload.tasks: give at least one of apps, math with a weight",
                    ));
                }
                for (t, w) in &g.tasks {
                    crate::trace::Task::parse(t).map_err(|e| e.context(format!("workload.tasks.{t}")))?;
                    if !(*w >= 0.0 && w.is_finite()) {
                        return Err(Error::bad(format!(
                            "workload.tasks.{t}: expected a non-negative weight, got {w}"
                        )));
                    }
                }
                if g.tasks.values().sum::<f64>() <= 0.0 {
                    return Err(Error::bad("workload.tasks: the weights sum to 0"));
                }
                if !(0.0..=100.0).contains(&g.tool_delay_scale) {
                    return Err(Error::bad(format!(
                        "workload.tool_delay_scale: expected 0 to 100, got {}",
                        crate::error::num(g.tool_delay_scale)
                    )));
                }
                if let Some(dir) = &g.problems {
                    let d = base_dir.join(dir);
                    for t in g.tasks.keys() {
                        let task = crate::trace::Task::parse(t).expect("checked above");
                        crate::trace::gen::load_items(crate::trace::FittedParams::embedded().task(task), task, &d)
                            .map_err(|e| e.context("workload.problems"))?;
                    }
                }
                if crate::trace::gen::MAX_PROMPT_TOKENS >= min_len {
                    return Err(Error::bad(format!(
                        "cluster.engines: generated workflows may have prompts up to {} tokens; every max_model_len must exceed that (smallest is {min_len})",
                        crate::trace::gen::MAX_PROMPT_TOKENS
                    )));
                }
            }
            Workload::AzureTrace(a) => {
                a.arrivals.validate("workload.arrivals")?;
                if let ArrivalSpec::Trace { path: Some(_), .. } = a.arrivals {
                    return Err(Error::bad("workload.arrivals.path: an azure_trace workload takes its timestamps from workload.path; remove arrivals.path"));
                }
                let p = base_dir.join(&a.path);
                if !p.exists() {
                    return Err(Error::bad(format!("workload.path: {} does not exist", p.display())));
                }
                if a.limit == Some(0) {
                    return Err(Error::bad(
                        "workload.limit: expected at least 1 row (leave it out for the whole file)",
                    ));
                }
                if a.max_total_tokens < 2 || a.max_total_tokens > min_len {
                    return Err(Error::bad(format!(
                        "workload.max_total_tokens: expected 2..={min_len} (the smallest max_model_len), got {}",
                        a.max_total_tokens
                    )));
                }
            }
        }
        if sc.limits.max_events == 0 {
            return Err(Error::bad("limits.max_events: expected at least 1"));
        }
        for (i, f) in sc.faults.iter().enumerate() {
            check_fault(i, f, &engines)?;
        }
        let (predictor, router) = resolve_policy_models(&mut sc.policy, &models, base_dir)?;
        Ok(Resolved {
            scenario: sc,
            engines,
            models,
            base_dir: base_dir.to_path_buf(),
            predictor,
            router,
        })
    }
}

#[cfg(test)]
mod tests;

/// One engine resolved alone (for `chimera emulate`): `model` on `gpu` with `calibration`
/// (`auto` by default) and extra `--set` overrides on `cluster.engines[0]` fields.
pub fn single_engine(model: &str, gpu: &str, calibration: Option<&str>, sets: &[String]) -> Result<ResolvedEngine> {
    let text = format!(
        "name: emulate\nseed: 1\ncluster:\n  engines:\n    - name: emulated\n      model: \"{model}\"\n      gpu: \"{gpu}\"\n      calibration: \"{}\"\n\
         workload:\n  kind: synthetic\n  workflows: 1\n  stages: {{dist: constant, value: 1}}\n\
         \x20 first_prompt_tokens: {{dist: constant, value: 16}}\n  stage_prompt_tokens: {{dist: constant, value: 1}}\n\
         \x20 output_tokens: {{dist: constant, value: 1}}\n  observation_tokens: {{dist: constant, value: 0}}\n\
         \x20 tool_delay_ms: {{dist: constant, value: 0}}\n  max_prompt_tokens: 17\n  arrivals: {{process: poisson, rate_per_s: 1.0}}\n\
         policy:\n  routing: {{kind: round_robin}}\n",
        calibration.unwrap_or("auto")
    );
    let sets: Vec<String> = sets.iter().map(|s| format!("cluster.engines[0].{s}")).collect();
    let mut r = load_str(&text, &sets, Path::new("."))?;
    Ok(r.engines.remove(0))
}
