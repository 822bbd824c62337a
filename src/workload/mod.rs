//! Workloads: what arrives and when. A workflow is a chain of stages (LLM calls); each stage
//! has a prompt (its own tokens plus the context accumulated so far), an output length and a
//! tool delay before the next stage. Workflows are counterfactual: a [`Plan`] per candidate
//! model says what would happen on that model, and the simulation realises the one the
//! policy picks.
//!
//! Sources are lazy iterators in arrival order, so memory does not grow with the number of
//! workflows. This module never routes, schedules or writes results.

pub mod arrivals;
pub mod azure;
pub mod dist;
pub mod serving;
pub mod synthetic;

use crate::error::Result;
use crate::time::Nanos;
use std::sync::Arc;

/// The most tokens one field of a request may hold (a prompt, its context, an output): 10^7,
/// beyond any model's context window, and small enough that sums of a few stay far inside
/// 32 bits. Larger counts are refused where they enter (scenario, trace, request file).
pub const MAX_TOKENS: u32 = 10_000_000;

/// The most stages (LLM calls) one workflow may have.
pub const MAX_STAGES: u32 = 64;

/// Check a token count against [`MAX_TOKENS`]; the caller names the field.
pub fn check_tokens(v: u64) -> std::result::Result<(), String> {
    if v > MAX_TOKENS as u64 {
        Err(format!(
            "{v} tokens is more than the {MAX_TOKENS} a request field may hold"
        ))
    } else {
        Ok(())
    }
}

/// One LLM call of a workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    /// Whole prompt: this stage's own tokens plus `context_tokens`.
    pub prompt_tokens: u32,
    /// Tokens of the prompt carried over from earlier stages (outputs, observations).
    pub context_tokens: u32,
    pub output_tokens: u32,
    /// Tool time after this stage finishes, before the next stage is ready.
    pub tool_delay_ns: Nanos,
    /// The first stage's prompt begins with a prefix shared by a group of requests (a
    /// system prompt): `(group id, tokens)`. Later stages share their context with the
    /// stage before instead (see the simulator).
    pub prefix: Option<(u64, u32)>,
    /// The rest of a first stage's prompt repeats too: every request with this id sends the
    /// same prompt (a load generator cycling a fixed set of prompts, as inference-perf does),
    /// so a later one finds it in the prefix cache. None: the prompt is its own.
    pub prompt_id: Option<u64>,
}

/// What a workflow does on one candidate model (or on any, when `model` is None).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub model: Option<Arc<str>>,
    pub stages: Vec<Stage>,
    /// Whether the task is solved on this model, when known.
    pub success: Option<bool>,
}

/// One workflow as it arrives.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowSpec {
    pub id: u64,
    pub arrival_ns: Nanos,
    /// Task text, when the source has it (routers read it).
    pub text: Option<Arc<str>>,
    /// Task family (`apps`, `math`), when the source knows it.
    pub task: Option<Arc<str>>,
    pub plans: Vec<Plan>,
}

impl WorkflowSpec {
    /// A workflow with no text or task whose one plan applies to any model.
    pub fn anonymous(id: u64, arrival_ns: Nanos, stages: Vec<Stage>) -> Self {
        WorkflowSpec {
            id,
            arrival_ns,
            text: None,
            task: None,
            plans: vec![Plan {
                model: None,
                stages,
                success: None,
            }],
        }
    }

    /// Index of the plan a workflow routed to `model` follows: its own if present, else the
    /// model-independent one, else the first.
    pub fn plan_index(&self, model: &str) -> usize {
        self.plans
            .iter()
            .position(|p| p.model.as_deref() == Some(model))
            .or_else(|| self.plans.iter().position(|p| p.model.is_none()))
            .unwrap_or(0)
    }

    /// The plan for `model`: its own if present, else the model-independent one.
    pub fn plan_for(&self, model: &str) -> &Plan {
        self.plans
            .iter()
            .find(|p| p.model.as_deref() == Some(model))
            .or_else(|| self.plans.iter().find(|p| p.model.is_none()))
            .unwrap_or(&self.plans[0])
    }
}

/// A lazy, arrival-ordered stream of workflows.
pub trait WorkloadSource {
    /// The next workflow, or None when the source is exhausted.
    fn next_workflow(&mut self) -> Result<Option<WorkflowSpec>>;
    /// How many workflows the source will produce, when known (for progress bars).
    fn expected_len(&self) -> Option<u64>;
}
