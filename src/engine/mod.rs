//! One vLLM v1 engine replica: waiting and running queues, the v1 step algorithm, paged KV
//! blocks and recompute preemption (shared/docs/engine.md, "One scheduler step").
//!
//! The engine is driven from outside: [`Engine::begin_step`] schedules a batch at `now` and
//! returns its duration; [`Engine::end_step`] applies it when that time has come. It never
//! reads a clock, never decides routing or priorities (they arrive with each request) and
//! never writes files.

pub mod kv;

use crate::hw::steptime::StepModel;
use crate::hw::StepShape;
use crate::time::Nanos;
use kv::{block_hash, blocks_for, mix, KvPool, Seg};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

/// How the engine orders its waiting queue and picks preemption victims.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EnginePolicy {
    /// First come, first served; the newest running request is preempted first.
    #[default]
    Fcfs,
    /// `--scheduling-policy priority`: waiting ordered by (priority, arrival), lower first; the
    /// running request with the largest (priority, arrival) is preempted first.
    Priority,
    /// A modified engine (the learning-to-rank scheduler's rule): every step ranks all requests
    /// by (promoted first, priority, arrival) and fills the batch in that order, preempting the
    /// lowest-ranked requests holding KV when blocks run short. A request that waits
    /// `starvation_steps` steps is promoted for `quantum_steps` steps in which it is scheduled
    /// and produces a token (steps of its prefill do not count), then demoted. Unmodified vLLM
    /// cannot run this.
    PriorityAging { starvation_steps: u32, quantum_steps: u32 },
    /// A modified engine (FastServe-style multi-level feedback queue): level l gets a quantum of
    /// `base_quantum_ms * growth^l` of service time; a request that uses up its quantum moves
    /// down a level; one idle longer than `starvation_ms` returns to level 0. New requests enter
    /// level 0, or with `skip_join` the first level whose quantum exceeds their prefill time.
    /// Batches are filled by (level, arrival), preempting the lowest-ranked holders of KV.
    Mlfq {
        base_quantum_ms: f64,
        growth: f64,
        starvation_ms: f64,
        #[serde(default)]
        skip_join: bool,
    },
}

/// Static limits of an engine.
#[derive(Debug, Clone)]
pub struct EngineLimits {
    pub max_num_batched_tokens: u32,
    pub max_num_seqs: u32,
    pub max_model_len: u32,
    pub policy: EnginePolicy,
    /// vLLM's automatic prefix caching (on by default in v1).
    pub prefix_caching: bool,
    /// Tokens per KV block (vLLM's `--block-size`: 16 on GPUs, a multiple of 32 on CPUs).
    pub block_size: u32,
}

/// What a request's prompt is made of, for the prefix cache: runs of content (see [`Seg`])
/// and the content id of the tokens it will generate. A request without one shares nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptContent {
    pub segs: Arc<[Seg]>,
    pub output_id: u64,
    /// Leading tokens of the sequence (prompt, then output) that another request may send
    /// again (a shared system prompt, a context the next stage resends): only their blocks
    /// are registered in the prefix cache as they fill. The rest is unique to this request,
    /// so nobody else can hit it; it is registered only when the request is preempted (its
    /// own resume may find it), which gives the same hits as caching everything, for less work.
    pub reusable: u32,
}

/// A request handed to an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewRequest {
    pub id: u64,
    pub workflow: u64,
    pub stage: u32,
    pub prompt_tokens: u32,
    /// Output tokens to generate (`max_tokens = min_tokens`, `ignore_eos`).
    pub output_tokens: u32,
    pub priority: i64,
    /// When the client had the request ready (before routing and middleware queueing).
    pub arrival_ns: Nanos,
    /// When it reached this engine.
    pub dispatch_ns: Nanos,
}

/// A request the engine has finished (or refused).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FinishedRequest {
    pub req: NewRequest,
    pub engine: u32,
    /// Output tokens actually produced (less than asked only when `max_model_len` stopped it).
    pub output_tokens: u32,
    pub first_scheduled_ns: Nanos,
    pub first_token_ns: Nanos,
    pub finish_ns: Nanos,
    pub preemptions: u32,
    /// The prompt alone exceeds `max_model_len`: refused with no output, as vLLM answers 400.
    pub rejected: bool,
    /// Prompt tokens found in the prefix cache when the request was first scheduled.
    pub cached_tokens: u32,
}

/// What one step looked like, for the engine log and `vllm:iteration_tokens_total`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepReport {
    pub start_ns: Nanos,
    pub duration_ns: Nanos,
    pub tokens: u32,
    pub prefill_tokens: u32,
    pub decode_tokens: u32,
    /// Requests admitted (holding KV) after scheduling; under the ranked policies some of them
    /// may be paused this step.
    pub running: u32,
    pub waiting: u32,
    pub kv_used_blocks: u32,
    pub preempted: u32,
    /// Requests in this step's batch.
    pub batch: u32,
}

#[derive(Debug, Clone)]
struct Slot {
    req: NewRequest,
    generated: u32,
    computed: u32,
    /// KV blocks held.
    held: u32,
    /// Their ids, in sequence order (kept only with the prefix cache on; without it block
    /// identity carries nothing and only the count is kept).
    blocks: Vec<u32>,
    /// Content hashes of the first `hashes.len()` (full) blocks of the sequence.
    hashes: Vec<u64>,
    content: Option<PromptContent>,
    cached_tokens: u32,
    scheduled_once: bool,
    /// Leading blocks registered in (or taken from) the prefix cache.
    registered: u32,
    seq: u64,
    first_scheduled_ns: Nanos,
    first_token_ns: Nanos,
    preemptions: u32,
    done: bool,
    /// Steps waited since last scheduled (aging policy).
    idle: u32,
    /// Steps of promotion left (aging policy).
    promoted_left: u32,
    /// MLFQ level, service time used in it, and when the request last ran (or arrived).
    level: u32,
    served_ns: Nanos,
    last_run_ns: Nanos,
}

impl Slot {
    #[inline]
    fn tokens(&self) -> u32 {
        self.req.prompt_tokens + self.generated
    }
}

#[derive(Debug)]
enum Waiting {
    Fcfs(VecDeque<u32>),
    Priority(BinaryHeap<Reverse<(i64, u64, u32)>>),
}

/// One engine replica.
#[derive(Debug)]
pub struct Engine {
    pub id: u32,
    pub limits: EngineLimits,
    pub steptime: std::sync::Arc<dyn StepModel>,
    kv: KvPool,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    running: Vec<u32>,
    waiting: Waiting,
    scheduled: Vec<(u32, u32)>,
    next_seq: u64,
    in_step: bool,
    step: StepReport,
    total_preemptions: u64,
    /// Prompt tokens looked up in the prefix cache and found there (vLLM's
    /// `prefix_cache_queries` / `prefix_cache_hits`, counted each time a request is admitted).
    pub prefix_queries: u64,
    pub prefix_hits: u64,
}

impl Engine {
    pub fn new(id: u32, limits: EngineLimits, steptime: std::sync::Arc<dyn StepModel>, usable_kv_blocks: u32) -> Self {
        let waiting = match limits.policy {
            EnginePolicy::Fcfs | EnginePolicy::PriorityAging { .. } | EnginePolicy::Mlfq { .. } => {
                Waiting::Fcfs(VecDeque::new())
            }
            EnginePolicy::Priority => Waiting::Priority(BinaryHeap::new()),
        };
        let caching = limits.prefix_caching;
        Engine {
            id,
            limits,
            steptime,
            kv: KvPool::with_caching(usable_kv_blocks, caching),
            slots: Vec::new(),
            free_slots: Vec::new(),
            running: Vec::new(),
            waiting,
            scheduled: Vec::new(),
            next_seq: 0,
            in_step: false,
            step: StepReport::default(),
            total_preemptions: 0,
            prefix_queries: 0,
            prefix_hits: 0,
        }
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }
    pub fn num_waiting(&self) -> usize {
        match &self.waiting {
            Waiting::Fcfs(q) => q.len(),
            Waiting::Priority(h) => h.len(),
        }
    }
    pub fn kv(&self) -> &KvPool {
        &self.kv
    }
    pub fn in_step(&self) -> bool {
        self.in_step
    }
    pub fn total_preemptions(&self) -> u64 {
        self.total_preemptions
    }
    /// (request id, output tokens generated so far) of every running request, for drivers that
    /// stream tokens as steps end (the emulator).
    pub fn progress(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.running.iter().map(|&r| {
            let s = &self.slots[r as usize];
            (s.req.id, s.generated)
        })
    }

    /// Ids of the requests the engine holds (running, then waiting), e.g. to fail them all
    /// when the engine dies.
    pub fn request_ids(&self) -> Vec<u64> {
        let waiting: Vec<u32> = match &self.waiting {
            Waiting::Fcfs(q) => q.iter().copied().collect(),
            Waiting::Priority(h) => h.iter().map(|Reverse((_, _, s))| *s).collect(),
        };
        self.running
            .iter()
            .chain(waiting.iter())
            .map(|&s| self.slots[s as usize].req.id)
            .collect()
    }

    /// Requests the engine holds (running or waiting).
    pub fn outstanding(&self) -> usize {
        self.running.len() + self.num_waiting()
    }
    pub fn has_work(&self) -> bool {
        self.outstanding() > 0
    }

    fn push_waiting(&mut self, slot: u32, front: bool) {
        let s = &self.slots[slot as usize];
        match &mut self.waiting {
            Waiting::Fcfs(q) => {
                if front {
                    q.push_front(slot)
                } else {
                    q.push_back(slot)
                }
            }
            Waiting::Priority(h) => h.push(Reverse((s.req.priority, s.seq, slot))),
        }
    }

    fn peek_waiting(&self) -> Option<u32> {
        match &self.waiting {
            Waiting::Fcfs(q) => q.front().copied(),
            Waiting::Priority(h) => h.peek().map(|Reverse((_, _, s))| *s),
        }
    }

    fn pop_waiting(&mut self) {
        match &mut self.waiting {
            Waiting::Fcfs(q) => {
                q.pop_front();
            }
            Waiting::Priority(h) => {
                h.pop();
            }
        }
    }

    /// Accept a request at `now`. A prompt longer than `max_model_len - 1` is refused at once
    /// and returned as finished-and-rejected.
    pub fn add_request(&mut self, req: NewRequest) -> Option<FinishedRequest> {
        self.add_request_with(req, None)
    }

    /// Accept a request whose prompt content is known (prefix caching can then find it).
    pub fn add_request_with(&mut self, req: NewRequest, content: Option<PromptContent>) -> Option<FinishedRequest> {
        if req.prompt_tokens == 0 || req.prompt_tokens >= self.limits.max_model_len {
            return Some(FinishedRequest {
                req,
                engine: self.id,
                output_tokens: 0,
                first_scheduled_ns: req.dispatch_ns,
                first_token_ns: req.dispatch_ns,
                finish_ns: req.dispatch_ns,
                preemptions: 0,
                rejected: true,
                cached_tokens: 0,
            });
        }
        let (blocks, hashes) = match self.free_slots.last() {
            Some(&i) => {
                let s = &mut self.slots[i as usize];
                let (mut b, mut h) = (std::mem::take(&mut s.blocks), std::mem::take(&mut s.hashes));
                b.clear();
                h.clear();
                (b, h)
            }
            None => (Vec::new(), Vec::new()),
        };
        let slot = Slot {
            req,
            generated: 0,
            computed: 0,
            held: 0,
            blocks,
            hashes,
            content,
            cached_tokens: 0,
            scheduled_once: false,
            registered: 0,
            seq: self.next_seq,
            first_scheduled_ns: -1,
            first_token_ns: -1,
            preemptions: 0,
            done: false,
            idle: 0,
            promoted_left: 0,
            level: 0,
            served_ns: 0,
            last_run_ns: req.dispatch_ns,
        };
        self.next_seq += 1;
        let idx = match self.free_slots.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        if let EnginePolicy::Mlfq {
            base_quantum_ms,
            growth,
            skip_join: true,
            ..
        } = self.limits.policy
        {
            let mut shape = StepShape::default();
            shape.add(
                0,
                req.prompt_tokens.min(self.limits.max_num_batched_tokens) as u64,
                true,
            );
            let chunks = req.prompt_tokens.div_ceil(self.limits.max_num_batched_tokens.max(1)) as f64;
            let prefill = self.steptime.step_ns(&shape) as f64 * chunks;
            let mut level = 0;
            while level < 30 && base_quantum_ms * 1e6 * growth.powi(level as i32) <= prefill {
                level += 1;
            }
            self.slots[idx as usize].level = level;
        }
        self.push_waiting(idx, false);
        None
    }

    /// Free `victim`'s KV and send it back to waiting with nothing computed.
    fn preempt(&mut self, victim: u32) {
        self.evict(victim);
        let s = &mut self.slots[victim as usize];
        s.computed = 0;
        s.preemptions += 1;
        self.total_preemptions += 1;
        self.step.preempted += 1;
        self.push_waiting(victim, true);
    }

    /// A preempted request gives back its blocks, registering the full ones first: on resume
    /// it finds whatever of them was not evicted meanwhile.
    fn evict(&mut self, slot: u32) {
        self.register_full_blocks(slot, u32::MAX);
        self.free_blocks(slot);
    }

    /// Give back every KV block `slot` holds (cached content stays findable until evicted).
    fn free_blocks(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if self.kv.caching() {
            self.kv.release(&s.blocks);
            s.blocks.clear();
        } else {
            self.kv.give_back(s.held);
        }
        s.held = 0;
        s.registered = 0;
    }

    /// Try to hold KV for `n` more computed tokens of `slot`.
    #[inline]
    fn try_grow(&mut self, slot: u32, n: u32) -> bool {
        let s = &mut self.slots[slot as usize];
        let need = blocks_for(s.computed + n, self.limits.block_size).saturating_sub(s.held);
        if need == 0 {
            return true;
        }
        let ok = if self.kv.caching() {
            self.kv.try_take(need, &mut s.blocks)
        } else {
            self.kv.take_count(need)
        };
        if ok {
            s.held += need;
        }
        ok
    }

    /// Hash of full block `b` of `slot`'s sequence, extending its hash chain as needed.
    fn hash_of(&mut self, slot: u32, b: u32) -> u64 {
        let bs = self.limits.block_size;
        let s = &mut self.slots[slot as usize];
        while s.hashes.len() as u32 <= b {
            let k = s.hashes.len() as u32;
            let prev = if k == 0 { 0 } else { s.hashes[k as usize - 1] };
            let h = match &s.content {
                Some(c) => block_hash(prev, k, bs, &c.segs, c.output_id),
                // No known content: unique to this request.
                None => block_hash(prev, k, bs, &[], mix(0xC0FFEE, s.req.id)),
            };
            s.hashes.push(h);
        }
        s.hashes[b as usize]
    }

    /// A request about to be admitted with nothing computed: take the blocks of its longest
    /// cached prefix (whole blocks, at most all tokens but the last) and count the lookup.
    fn take_cached_prefix(&mut self, slot: u32) {
        let s = &self.slots[slot as usize];
        if s.computed != 0 || s.held != 0 {
            return;
        }
        let tokens = s.tokens();
        let first = !s.scheduled_once;
        let bs = self.limits.block_size;
        let mut hit_blocks = 0u32;
        // Content unique to this request can only be cached by the request itself, once it
        // has been preempted.
        let may_hit = s.content.is_some() || s.preemptions > 0;
        if self.kv.caching() {
            let max_blocks = if may_hit { (tokens - 1) / bs } else { 0 };
            while hit_blocks < max_blocks {
                let h = self.hash_of(slot, hit_blocks);
                let Some(b) = self.kv.lookup(h) else { break };
                self.kv.touch(b);
                let s = &mut self.slots[slot as usize];
                s.blocks.push(b);
                s.held += 1;
                hit_blocks += 1;
            }
            self.prefix_queries += tokens as u64;
            self.prefix_hits += (hit_blocks * bs) as u64;
        }
        let s = &mut self.slots[slot as usize];
        s.computed = hit_blocks * bs;
        s.registered = hit_blocks;
        if first {
            s.cached_tokens = s.computed;
            s.scheduled_once = true;
        }
    }

    /// Undo [`take_cached_prefix`] for a request that could not be admitted after all.
    fn untake_cached_prefix(&mut self, slot: u32) {
        self.free_blocks(slot);
        let s = &mut self.slots[slot as usize];
        s.computed = 0;
        if s.preemptions == 0 {
            // Never admitted: its first scheduling is still to come.
            s.scheduled_once = false;
            s.cached_tokens = 0;
        }
    }

    /// Register the blocks of `slot` that its computed tokens have filled, within its first
    /// `limit` tokens.
    fn register_full_blocks(&mut self, slot: u32, limit: u32) {
        if !self.kv.caching() {
            return;
        }
        let s = &self.slots[slot as usize];
        let full = (s.computed.min(limit) / self.limits.block_size).min(s.blocks.len() as u32);
        let mut b = s.registered;
        while b < full {
            let h = self.hash_of(slot, b);
            let id = self.slots[slot as usize].blocks[b as usize];
            self.kv.register(id, h);
            b += 1;
        }
        let s = &mut self.slots[slot as usize];
        s.registered = s.registered.max(full);
    }

    /// Schedule one step at `now` (the v1 algorithm). Returns the step's duration, or None if
    /// there is nothing to run.
    pub fn begin_step(&mut self, now: Nanos) -> Option<Nanos> {
        assert!(!self.in_step, "engine {}: begin_step while a step is running", self.id);
        self.scheduled.clear();
        self.step = StepReport {
            start_ns: now,
            ..StepReport::default()
        };
        if let EnginePolicy::PriorityAging { .. } | EnginePolicy::Mlfq { .. } = self.limits.policy {
            self.schedule_ranked(now);
            return self.finish_schedule();
        }
        let mut budget = self.limits.max_num_batched_tokens;

        // 1. Running requests, in admission order.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let slot = self.running[i];
            let s = &self.slots[slot as usize];
            let owed = s.tokens() - s.computed;
            let n = owed.min(budget);
            if n == 0 {
                i += 1;
                continue;
            }
            let mut can_schedule = true;
            while !self.try_grow(slot, n) {
                let victim_pos = match self.limits.policy {
                    EnginePolicy::Fcfs | EnginePolicy::PriorityAging { .. } | EnginePolicy::Mlfq { .. } => {
                        self.running.len() - 1
                    }
                    EnginePolicy::Priority => {
                        let mut best = 0;
                        for (p, &r) in self.running.iter().enumerate() {
                            let (a, b) = (&self.slots[r as usize], &self.slots[self.running[best] as usize]);
                            if (a.req.priority, a.seq) > (b.req.priority, b.seq) {
                                best = p;
                            }
                        }
                        best
                    }
                };
                let victim = self.running.remove(victim_pos);
                if victim_pos < i {
                    // Already scheduled in this step: unschedule it and restore its budget.
                    i -= 1;
                    if let Some(k) = self.scheduled.iter().position(|&(s, _)| s == victim) {
                        let (_, m) = self.scheduled.remove(k);
                        budget += m;
                    }
                }
                self.preempt(victim);
                if victim == slot {
                    can_schedule = false;
                    break;
                }
            }
            if !can_schedule {
                break;
            }
            self.scheduled.push((slot, n));
            budget -= n;
            i += 1;
        }

        // 2. Waiting requests, only if nothing was preempted.
        if self.step.preempted == 0 {
            while budget > 0 && (self.running.len() as u32) < self.limits.max_num_seqs {
                let Some(slot) = self.peek_waiting() else {
                    break;
                };
                let (queries, hits) = (self.prefix_queries, self.prefix_hits);
                self.take_cached_prefix(slot);
                let s = &self.slots[slot as usize];
                let n = (s.tokens() - s.computed).min(budget);
                if !self.try_grow(slot, n) {
                    self.untake_cached_prefix(slot);
                    (self.prefix_queries, self.prefix_hits) = (queries, hits);
                    break;
                }
                self.pop_waiting();
                let s = &mut self.slots[slot as usize];
                if s.first_scheduled_ns < 0 {
                    s.first_scheduled_ns = now;
                }
                self.running.push(slot);
                self.scheduled.push((slot, n));
                budget -= n;
            }
        }

        self.finish_schedule()
    }

    /// Price the scheduled batch and mark the step as running.
    fn finish_schedule(&mut self) -> Option<Nanos> {
        if self.scheduled.is_empty() {
            return None;
        }
        let mut shape = StepShape::default();
        for &(slot, n) in &self.scheduled {
            let s = &self.slots[slot as usize];
            let samples = s.computed + n >= s.tokens();
            shape.add(s.computed as u64, n as u64, samples);
            if n == 1 && samples {
                self.step.decode_tokens += 1;
            } else {
                self.step.prefill_tokens += n;
            }
        }
        let dur = self.steptime.step_ns(&shape);
        self.step.duration_ns = dur;
        self.step.tokens = shape.tokens as u32;
        self.step.running = self.running.len() as u32;
        self.step.batch = self.scheduled.len() as u32;
        self.step.waiting = self.num_waiting() as u32;
        self.step.kv_used_blocks = self.kv.used();
        self.in_step = true;
        Some(dur)
    }

    /// Stretch the step in progress by `factor` (a slowed engine, `faults: kind: slow`);
    /// returns its new duration.
    pub fn stretch_step(&mut self, factor: f64) -> Nanos {
        assert!(self.in_step, "engine {}: stretch_step without a step", self.id);
        let d = ((self.step.duration_ns as f64) * factor).round().max(1.0) as Nanos;
        self.step.duration_ns = d;
        d
    }

    /// Apply the running step at its end time `now`: advance computed tokens, sample, finish.
    /// Finished requests are appended to `out`. Returns the step's report.
    pub fn end_step(&mut self, now: Nanos, out: &mut Vec<FinishedRequest>) -> StepReport {
        assert!(self.in_step, "engine {}: end_step without a step", self.id);
        self.in_step = false;
        let max_len = self.limits.max_model_len;
        let mut any_done = false;
        let mlfq = match self.limits.policy {
            EnginePolicy::Mlfq {
                base_quantum_ms,
                growth,
                ..
            } => Some((base_quantum_ms * 1e6, growth)),
            _ => None,
        };
        let step_ns = self.step.duration_ns;
        let caching = self.kv.caching();
        let bs = self.limits.block_size;
        for k in 0..self.scheduled.len() {
            let (slot, n) = self.scheduled[k];
            let s = &mut self.slots[slot as usize];
            if let Some((base, growth)) = mlfq {
                s.served_ns += step_ns;
                s.last_run_ns = now;
                while s.level < 30 && s.served_ns as f64 >= base * growth.powi(s.level as i32) {
                    s.served_ns -= (base * growth.powi(s.level as i32)) as Nanos;
                    s.level += 1;
                }
            }
            s.computed += n;
            let filled = s.computed / bs > (s.computed - n) / bs;
            if filled && caching {
                let limit = s.content.as_ref().map_or(0, |c| c.reusable);
                if limit >= bs {
                    self.register_full_blocks(slot, limit);
                }
            }
            let s = &mut self.slots[slot as usize];
            if s.computed >= s.tokens() {
                s.generated += 1;
                if s.first_token_ns < 0 {
                    s.first_token_ns = now;
                }
                if s.generated >= s.req.output_tokens || s.tokens() >= max_len {
                    s.done = true;
                    any_done = true;
                    let cached_tokens = s.cached_tokens;
                    out.push(FinishedRequest {
                        req: s.req,
                        engine: self.id,
                        output_tokens: s.generated,
                        first_scheduled_ns: s.first_scheduled_ns,
                        first_token_ns: s.first_token_ns,
                        finish_ns: now,
                        preemptions: s.preemptions,
                        rejected: false,
                        cached_tokens,
                    });
                    self.free_blocks(slot);
                }
            }
        }
        if any_done {
            let slots = &self.slots;
            let free = &mut self.free_slots;
            self.running.retain(|&r| {
                if slots[r as usize].done {
                    free.push(r);
                    false
                } else {
                    true
                }
            });
        }
        self.step
    }

    /// One step of the ranked (learning-to-rank style) policy with aging.
    fn schedule_ranked(&mut self, now: Nanos) {
        let mut cand: Vec<u32> = self.running.clone();
        if let Waiting::Fcfs(q) = &mut self.waiting {
            cand.extend(q.drain(..));
        }
        let policy = self.limits.policy;
        if let EnginePolicy::Mlfq { starvation_ms, .. } = policy {
            let limit = (starvation_ms * 1e6) as Nanos;
            for &c in &cand {
                let s = &mut self.slots[c as usize];
                if now - s.last_run_ns > limit {
                    s.level = 0;
                    s.served_ns = 0;
                }
            }
        }
        let key = |s: &Slot| match policy {
            EnginePolicy::Mlfq { .. } => (false, s.level as i64, s.seq),
            _ => (s.promoted_left == 0, s.req.priority, s.seq),
        };
        cand.sort_by(|&a, &b| key(&self.slots[a as usize]).cmp(&key(&self.slots[b as usize])));
        let (starvation, quantum) = match policy {
            EnginePolicy::PriorityAging {
                starvation_steps,
                quantum_steps,
            } => (starvation_steps, quantum_steps),
            _ => (u32::MAX, 1),
        };
        let mut selected = vec![false; self.slots.len()];
        // Whether the selected request samples a token in this step (its prompt is complete).
        let mut samples = vec![false; self.slots.len()];
        let mut budget = self.limits.max_num_batched_tokens;
        let mut count = 0u32;
        for ci in 0..cand.len() {
            if budget == 0 || count >= self.limits.max_num_seqs {
                break;
            }
            let c = cand[ci];
            let fresh = self.slots[c as usize].held == 0;
            let counters = (self.prefix_queries, self.prefix_hits);
            if fresh {
                self.take_cached_prefix(c);
            }
            let s = &self.slots[c as usize];
            let n = (s.tokens() - s.computed).min(budget);
            let mut ok = self.try_grow(c, n);
            while !ok {
                // Evict the lowest-ranked request holding KV that is not in this batch.
                let victim = cand
                    .iter()
                    .rev()
                    .copied()
                    .find(|&v| v != c && !selected[v as usize] && self.slots[v as usize].held > 0);
                let Some(v) = victim else { break };
                self.evict(v);
                let sv = &mut self.slots[v as usize];
                sv.computed = 0;
                sv.preemptions += 1;
                self.total_preemptions += 1;
                self.step.preempted += 1;
                ok = self.try_grow(c, n);
            }
            if !ok {
                if fresh {
                    self.untake_cached_prefix(c);
                    (self.prefix_queries, self.prefix_hits) = counters;
                }
                continue;
            }
            selected[c as usize] = true;
            let s = &mut self.slots[c as usize];
            samples[c as usize] = s.computed + n >= s.tokens();
            if s.first_scheduled_ns < 0 {
                s.first_scheduled_ns = now;
            }
            self.scheduled.push((c, n));
            budget -= n;
            count += 1;
        }
        // Aging, then rebuild running (holding KV, in rank order) and waiting.
        self.running.clear();
        for &c in &cand {
            let s = &mut self.slots[c as usize];
            if selected[c as usize] {
                s.idle = 0;
                // A promotion is spent only on steps that produce a token: a promoted request
                // keeps its rank through its (re)prefill, so every promotion yields output and
                // two starving requests cannot evict each other's prefills forever.
                if samples[c as usize] {
                    s.promoted_left = s.promoted_left.saturating_sub(1);
                }
            } else {
                s.idle += 1;
                if s.promoted_left == 0 && s.idle >= starvation {
                    s.promoted_left = quantum.max(1);
                    s.idle = 0;
                }
            }
            if s.held > 0 || selected[c as usize] {
                self.running.push(c);
            } else if let Waiting::Fcfs(q) = &mut self.waiting {
                q.push_back(c);
            }
        }
    }

    /// MLFQ level of request `id`, for tests and reports.
    pub fn level_of(&self, id: u64) -> Option<u32> {
        self.slots.iter().find(|s| s.req.id == id && !s.done).map(|s| s.level)
    }

    /// Promotion steps left of request `id` (aging policy), for tests and reports.
    pub fn promotion_of(&self, id: u64) -> Option<(u32, u32)> {
        self.slots
            .iter()
            .find(|s| s.req.id == id && !s.done)
            .map(|s| (s.idle, s.promoted_left))
    }

    /// Check the engine's invariants; returns a description of the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        // Every block's reference count equals the number of running requests holding it.
        let mut holders: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        for &r in &self.running {
            let s = &self.slots[r as usize];
            if self.kv.caching() && s.blocks.len() as u32 != s.held {
                return Err(format!(
                    "engine {}: request {} holds {} block ids, counts {}",
                    self.id,
                    s.req.id,
                    s.blocks.len(),
                    s.held
                ));
            }
            for &b in &s.blocks {
                *holders.entry(b).or_default() += 1;
            }
        }
        if !self.kv.caching() {
            let held: u64 = self.running.iter().map(|&r| self.slots[r as usize].held as u64).sum();
            if held != self.kv.used() as u64 {
                return Err(format!(
                    "engine {}: running requests hold {held} blocks, pool says {}",
                    self.id,
                    self.kv.used()
                ));
            }
        } else if holders.len() as u32 != self.kv.used() {
            return Err(format!(
                "engine {}: running requests hold {} distinct blocks, pool says {} in use",
                self.id,
                holders.len(),
                self.kv.used()
            ));
        }
        for (&b, &n) in &holders {
            if self.kv.refs_of(b) != n {
                return Err(format!(
                    "engine {}: block {b} has {n} holders but {} references",
                    self.id,
                    self.kv.refs_of(b)
                ));
            }
        }
        self.kv.check().map_err(|m| format!("engine {}: {m}", self.id))?;
        if self.kv.used() > self.kv.usable() {
            return Err(format!(
                "engine {}: {} KV blocks in use > capacity {}",
                self.id,
                self.kv.used(),
                self.kv.usable()
            ));
        }
        // (Under the ranked policy paused requests keep their KV, so only the batch is bounded.)
        let ranked = matches!(
            self.limits.policy,
            EnginePolicy::PriorityAging { .. } | EnginePolicy::Mlfq { .. }
        );
        if !ranked && self.running.len() > self.limits.max_num_seqs as usize {
            return Err(format!(
                "engine {}: {} running > max_num_seqs",
                self.id,
                self.running.len()
            ));
        }
        for &r in &self.running {
            let s = &self.slots[r as usize];
            if s.held < blocks_for(s.computed, self.limits.block_size) {
                return Err(format!(
                    "engine {}: request {} computed {} tokens with only {} blocks",
                    self.id, s.req.id, s.computed, s.held
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
