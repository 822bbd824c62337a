//! The policy core's inputs as data: a [`CoreInput`] is one `handle_*` call with its time, and
//! [`feed`] applies one and collects the decisions the core answers with. The workflow runtime
//! (`runtime.rs`) sends every input of both drivers through `feed` and can journal it
//! (`decisions.jsonl`: always in a replay, with `output.journal` in a run). Feeding either
//! record to a fresh core built by `factory::build_policy*` must give the same decisions
//! (`tests/replay.rs`, `tests/determinism.rs`). Plain data: no clock, file or socket.

use crate::policy::{Decision, FailureKind, PolicyCore, RequestInfo};
use crate::time::Nanos;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One input to the policy core, with its time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum CoreInput {
    Request {
        t: Nanos,
        request: u64,
        workflow: u64,
        stage: u32,
        prompt_tokens: u32,
        context_tokens: u32,
        workflow_output_so_far: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<Arc<str>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<Arc<str>>,
        /// Whether the trace's per-model truths were attached (oracle policies).
        #[serde(default)]
        oracle: bool,
    },
    Finished {
        t: Nanos,
        request: u64,
        output_tokens: u32,
    },
    Failed {
        t: Nanos,
        request: u64,
        transient: bool,
        /// No connection at all (counts against the engine's health); implies transient.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unreachable: bool,
        why: String,
    },
    /// The answer to a probe of an engine out of routing.
    Probe {
        t: Nanos,
        engine: u32,
        healthy: bool,
    },
    Report {
        t: Nanos,
        engine: u32,
        running: u32,
        waiting: u32,
        kv_usage: f64,
    },
    WorkflowDone {
        t: Nanos,
        workflow: u64,
    },
    Timeout {
        t: Nanos,
    },
}

/// A decision as written to the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum JournalDecision {
    Dispatch {
        request: u64,
        engine: u32,
        priority: i64,
        not_before: Nanos,
    },
    Abandon {
        request: u64,
        reason: String,
    },
    Probe {
        engine: u32,
        not_before: Nanos,
    },
}

impl From<&Decision> for JournalDecision {
    fn from(d: &Decision) -> Self {
        match d {
            Decision::Dispatch {
                request,
                engine,
                priority,
                not_before,
            } => JournalDecision::Dispatch {
                request: *request,
                engine: *engine,
                priority: *priority,
                not_before: *not_before,
            },
            Decision::Abandon { request, reason } => JournalDecision::Abandon {
                request: *request,
                reason: reason.clone(),
            },
            Decision::Probe { engine, not_before } => JournalDecision::Probe {
                engine: *engine,
                not_before: *not_before,
            },
        }
    }
}

/// One journal line: an input and the decisions the core answered with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    #[serde(flatten)]
    pub input: CoreInput,
    pub decisions: Vec<JournalDecision>,
}

/// Apply one input. `oracle` supplies the simulation truths a Request input says it carried.
pub fn feed(
    core: &mut PolicyCore,
    input: &CoreInput,
    oracle: impl FnOnce() -> Option<Arc<crate::policy::Oracle>>,
) -> Vec<Decision> {
    let mut out = std::collections::VecDeque::new();
    feed_into(core, input, oracle, &mut out);
    out.into()
}

/// [`feed`], appending the decisions to `out` (no allocation per input); returns how many.
pub fn feed_into(
    core: &mut PolicyCore,
    input: &CoreInput,
    oracle: impl FnOnce() -> Option<Arc<crate::policy::Oracle>>,
    out: &mut std::collections::VecDeque<Decision>,
) -> usize {
    match input {
        CoreInput::Request {
            t,
            request,
            workflow,
            stage,
            prompt_tokens,
            context_tokens,
            workflow_output_so_far,
            text,
            task,
            oracle: with_oracle,
        } => core.handle_request(
            *t,
            RequestInfo {
                request: *request,
                workflow: *workflow,
                stage: *stage,
                prompt_tokens: *prompt_tokens,
                context_tokens: *context_tokens,
                workflow_output_so_far: *workflow_output_so_far,
                text: text.clone(),
                task: task.clone(),
                oracle: if *with_oracle { oracle() } else { None },
            },
        ),
        CoreInput::Finished {
            t,
            request,
            output_tokens,
        } => core.handle_finished(*t, *request, *output_tokens),
        CoreInput::Failed {
            t,
            request,
            transient,
            unreachable,
            why,
        } => core.handle_failed(
            *t,
            *request,
            if *unreachable {
                FailureKind::Unreachable(why.clone())
            } else if *transient {
                FailureKind::Transient(why.clone())
            } else {
                FailureKind::Rejected(why.clone())
            },
        ),
        CoreInput::Probe { t, engine, healthy } => core.handle_probe(*t, *engine, *healthy),
        CoreInput::Report {
            t,
            engine,
            running,
            waiting,
            kv_usage,
        } => core.handle_engine_report(*t, *engine, *running, *waiting, *kv_usage),
        CoreInput::WorkflowDone { t, workflow } => core.handle_workflow_done(*t, *workflow),
        CoreInput::Timeout { t } => core.handle_timeout(*t),
    }
    let before = out.len();
    out.extend(std::iter::from_fn(|| core.poll_decision()));
    out.len() - before
}
