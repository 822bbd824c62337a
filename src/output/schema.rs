//! The columns of `requests.parquet` and `workflows.parquet`, shared by `chimera run` and
//! `chimera replay` (which appends its measured columns after these).

use crate::output::{ColType, Val};
use crate::runtime::WorkflowOutcome;

/// The columns of `requests.parquet`, in order (replay appends its measured columns).
pub fn request_columns(names: &ColType, models: &ColType, status: &[&str]) -> Vec<(&'static str, ColType)> {
    use ColType::*;
    vec![
        ("request_id", U64),
        ("workflow_id", U64),
        ("stage", U32),
        ("engine", names.clone()),
        ("model", models.clone()),
        ("status", str_col(status)),
        ("priority", I64),
        ("arrival_ns", I64),
        ("dispatch_ns", I64),
        // Null where the attempt got no answer (it failed) or the driver cannot see it.
        ("first_scheduled_ns", OptI64),
        ("first_token_ns", OptI64),
        ("finish_ns", OptI64),
        ("queue_ns", OptI64),
        ("ttft_ns", OptI64),
        ("tpot_ns", F64),
        ("e2e_ns", OptI64),
        ("prompt_tokens", U32),
        ("context_tokens", U32),
        ("output_tokens", U32),
        ("preemptions", U32),
        ("cached_tokens", U32),
    ]
}

/// The columns of `workflows.parquet`, in order.
pub fn workflow_columns(names: &ColType, models: &ColType, status: &[&str]) -> Vec<(&'static str, ColType)> {
    use ColType::*;
    vec![
        ("workflow_id", U64),
        ("model", models.clone()),
        ("engine", names.clone()),
        ("status", str_col(status)),
        ("arrival_ns", I64),
        ("finish_ns", I64),
        ("e2e_ns", I64),
        ("e2e_per_output_token_ns", F64),
        ("stages", U32),
        ("prompt_tokens", U64),
        ("output_tokens", U64),
        ("success", Bool),
        ("preemptions", U32),
    ]
}

/// A string column over a fixed set of values.
pub fn str_col(values: &[&str]) -> ColType {
    ColType::Str(values.iter().map(|x| x.to_string()).collect())
}

/// Request status, as written to `requests.parquet` (`REQUEST_STATUS` order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    Ok = 0,
    /// The engine refused it (a prompt over the context, HTTP 4xx).
    Rejected = 1,
    /// The attempt failed without an answer (replay only: 5xx, broken stream, timeout).
    Failed = 2,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        REQUEST_STATUS[self as usize]
    }
}

/// Workflow status, as written to `workflows.parquet` (`WORKFLOW_STATUS` order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowStatus {
    Ok = 0,
    /// The policy core gave up on one of its requests.
    Failed = 1,
}

impl WorkflowStatus {
    pub fn as_str(self) -> &'static str {
        WORKFLOW_STATUS[self as usize]
    }
}

/// Request statuses by index.
pub const REQUEST_STATUS: [&str; 3] = ["ok", "rejected", "failed"];
/// Workflow statuses by index.
pub const WORKFLOW_STATUS: [&str; 2] = ["ok", "failed"];

/// One row of `requests.parquet` (the columns every driver writes). A value the driver
/// could not observe is None (a replay cannot see when the engine first scheduled it).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRow {
    pub request_id: u64,
    pub workflow_id: u64,
    pub stage: u32,
    /// Index into the engine names.
    pub engine: u32,
    /// Index into the models.
    pub model: u32,
    pub status: RequestStatus,
    pub priority: i64,
    pub arrival_ns: i64,
    pub dispatch_ns: i64,
    pub first_scheduled_ns: Option<i64>,
    pub first_token_ns: Option<i64>,
    pub finish_ns: Option<i64>,
    pub queue_ns: Option<i64>,
    pub prompt_tokens: u32,
    pub context_tokens: u32,
    pub output_tokens: u32,
    pub preemptions: u32,
    pub cached_tokens: Option<u32>,
}

impl RequestRow {
    pub fn ttft_ns(&self) -> Option<i64> {
        self.first_token_ns.map(|f| f - self.arrival_ns)
    }
    pub fn e2e_ns(&self) -> Option<i64> {
        self.finish_ns.map(|f| f - self.arrival_ns)
    }
    /// (E2E - TTFT) / (output tokens - 1), as `vllm bench serve` computes it.
    pub fn tpot_ns(&self) -> Option<f64> {
        match (self.first_token_ns, self.finish_ns) {
            (Some(a), Some(b)) if self.output_tokens > 1 => Some((b - a) as f64 / (self.output_tokens - 1) as f64),
            _ => None,
        }
    }

    /// The row's values by column name, in `request_columns` order; `nullable` for a table
    /// whose `cached_tokens` is nullable (a replay's: not every server reports it).
    pub fn named(&self, nullable: bool) -> [(&'static str, Val); 21] {
        let t = Val::OptI64;
        [
            ("request_id", Val::U64(self.request_id)),
            ("workflow_id", Val::U64(self.workflow_id)),
            ("stage", Val::U32(self.stage)),
            ("engine", Val::Str(self.engine)),
            ("model", Val::Str(self.model)),
            ("status", Val::Str(self.status as u32)),
            ("priority", Val::I64(self.priority)),
            ("arrival_ns", Val::I64(self.arrival_ns)),
            ("dispatch_ns", Val::I64(self.dispatch_ns)),
            ("first_scheduled_ns", t(self.first_scheduled_ns)),
            ("first_token_ns", t(self.first_token_ns)),
            ("finish_ns", t(self.finish_ns)),
            ("queue_ns", t(self.queue_ns)),
            ("ttft_ns", t(self.ttft_ns())),
            ("tpot_ns", Val::F64(self.tpot_ns())),
            ("e2e_ns", t(self.e2e_ns())),
            ("prompt_tokens", Val::U32(self.prompt_tokens)),
            ("context_tokens", Val::U32(self.context_tokens)),
            ("output_tokens", Val::U32(self.output_tokens)),
            ("preemptions", Val::U32(self.preemptions)),
            (
                "cached_tokens",
                if nullable {
                    Val::OptI64(self.cached_tokens.map(i64::from))
                } else {
                    Val::U32(self.cached_tokens.unwrap_or(0))
                },
            ),
        ]
    }
}

/// One row of `workflows.parquet`, from the runtime's outcome and the model's index.
pub fn workflow_row(w: &WorkflowOutcome, model: u32) -> [(&'static str, Val); 13] {
    let e2e = w.e2e_ns();
    [
        ("workflow_id", Val::U64(w.id)),
        ("model", Val::Str(model)),
        ("engine", Val::Str(w.engine)),
        ("status", Val::Str(w.failed() as u32)),
        ("arrival_ns", Val::I64(w.arrival_ns)),
        ("finish_ns", Val::I64(w.finish_ns)),
        ("e2e_ns", Val::I64(e2e)),
        (
            "e2e_per_output_token_ns",
            Val::F64((w.output_tokens > 0).then(|| e2e as f64 / w.output_tokens as f64)),
        ),
        ("stages", Val::U32(w.stages)),
        ("prompt_tokens", Val::U64(w.prompt_tokens)),
        ("output_tokens", Val::U64(w.output_tokens)),
        ("success", Val::Bool(w.success)),
        ("preemptions", Val::U32(w.preemptions)),
    ]
}
