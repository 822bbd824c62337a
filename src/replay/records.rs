//! What a replay writes as it goes (JSON lines, one `write` per record, so a killed process
//! loses nothing it finished) and the Parquet tables built from those lines at the end.
//!
//! `requests.parquet` and `workflows.parquet` have the simulator's columns first, in its
//! order, then the measured extras; `itl.parquet` holds every inter-chunk gap; `metrics.parquet`
//! the /metrics samples. A value a client cannot observe (when the engine first scheduled a
//! request) is null.

use crate::error::{Error, Result};
use crate::output::schema::{
    request_columns, str_col, workflow_columns, workflow_row, RequestRow, RequestStatus, WorkflowStatus,
    REQUEST_STATUS, WORKFLOW_STATUS,
};
use crate::output::summary::Aggregates;
use crate::output::{ColType, Table, Val};
use crate::runtime::WorkflowOutcome;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One attempt of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub request_id: u64,
    /// 0 for the first try; retries count up.
    pub attempt: u32,
    pub workflow_id: u64,
    pub stage: u32,
    pub engine: String,
    pub model: String,
    /// ok | rejected (4xx) | failed (anything else).
    pub status: RequestStatus,
    pub error: Option<String>,
    pub http_status: Option<u16>,
    pub priority: i64,
    /// When the stage was ready (the request's arrival at the policy core), run timeline.
    pub arrival_ns: i64,
    /// When the driver meant to send it (decision time, or the retry backoff's end).
    pub scheduled_ns: i64,
    /// When it was sent (after the client-side concurrency limit let it through).
    pub send_ns: i64,
    pub first_token_ns: Option<i64>,
    pub finish_ns: Option<i64>,
    pub prompt_tokens: u32,
    pub context_tokens: u32,
    /// Tokens asked for (the trace's output length).
    pub max_tokens: u32,
    pub output_tokens: u32,
    /// Prompt tokens as the server counted them.
    pub server_prompt_tokens: Option<u32>,
    /// Prompt tokens the server found in its prefix cache (vLLM's usage.prompt_tokens_details).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u32>,
    /// Time from sending to each content chunk.
    pub chunk_ns: Vec<i64>,
    /// Output tokens of each chunk, when a chunk carried more than one (empty: one each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunk_tokens: Vec<u32>,
    /// The replay segment (0, then +1 per `--resume`).
    pub segment: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_timings: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowRecord {
    pub workflow_id: u64,
    pub model: String,
    pub engine: String,
    pub status: WorkflowStatus,
    pub error: Option<String>,
    pub arrival_ns: i64,
    pub finish_ns: i64,
    pub stages: u32,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    pub success: Option<bool>,
    pub segment: u32,
    /// The confidence per model the workflow was routed by, and that model's outcome when the
    /// trace knows it (absent without a confidence model).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub confidence: Vec<(String, f64, Option<bool>)>,
}

/// One /metrics scrape of one endpoint: its figures, or why there are none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRecord {
    pub engine: String,
    pub t_ns: i64,
    #[serde(flatten)]
    pub sample: super::client::MetricsSample,
    pub error: Option<String>,
}

/// An append-only JSON-lines file: each record is one `write` of one line.
pub struct Appender {
    path: PathBuf,
    file: std::fs::File,
}

impl Appender {
    pub fn open(path: &Path) -> Result<Appender> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Appender {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn append(&mut self, v: &impl Serialize) -> Result<()> {
        let mut line = serde_json::to_vec(v).map_err(|e| Error::other(format!("{}: {e}", self.path.display())))?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(|e| Error::io(&self.path, e))
    }
}

/// Read a JSON-lines file. A last line cut short by a kill is dropped; a bad line elsewhere is
/// an error naming the file and line.
pub fn read_lines<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let Some(text) = crate::input::read_text_if_exists(path)? else {
        return Ok(Vec::new());
    };
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(v) => out.push(v),
            Err(_) if i + 1 == lines.len() && !complete => break,
            Err(e) => return Err(Error::bad(format!("{}: line {}: {e}", path.display(), i + 1))),
        }
    }
    Ok(out)
}

/// Cut a torn last line off a JSON-lines file, so that appending starts on a fresh line.
pub fn repair_tail(path: &Path) -> Result<()> {
    let Ok(text) = std::fs::read(path) else { return Ok(()) };
    if text.is_empty() || text.ends_with(b"\n") {
        return Ok(());
    }
    let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    std::fs::write(path, &text[..keep]).map_err(|e| Error::io(path, e))
}

fn index_of(values: &[String], v: &str) -> u32 {
    values.iter().position(|x| x == v).expect("value collected first") as u32
}

fn distinct<'a>(it: impl Iterator<Item = &'a str>, first: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = first.iter().map(|s| s.to_string()).collect();
    let rest: BTreeSet<&str> = it.filter(|s| !first.contains(s)).collect();
    v.extend(rest.into_iter().map(str::to_string));
    v
}

/// The records that belong to the final result: a workflow restarted by `--resume` keeps only
/// the attempts of the segment it finished in.
pub fn final_requests(requests: Vec<RequestRecord>, workflows: &[WorkflowRecord]) -> Vec<RequestRecord> {
    let seg: HashMap<u64, u32> = workflows.iter().map(|w| (w.workflow_id, w.segment)).collect();
    requests
        .into_iter()
        .filter(|r| seg.get(&r.workflow_id) == Some(&r.segment))
        .collect()
}

/// Write the Parquet tables of a replay and fill `agg` for its summary.
pub fn write_tables(
    dir: &Path,
    engine_names: &[String],
    models: &[String],
    requests: &[RequestRecord],
    workflows: &[WorkflowRecord],
    metrics: &[MetricsRecord],
    agg: &mut Aggregates,
) -> Result<()> {
    let names = ColType::Str(engine_names.to_vec());
    let model_col = ColType::Str(models.to_vec());
    let errors = distinct(
        requests
            .iter()
            .filter_map(|r| r.error.as_deref())
            .chain(workflows.iter().filter_map(|w| w.error.as_deref())),
        &[""],
    );
    // requests.parquet: the simulator's columns, then what only a replay measures.
    let mut cols = request_columns(&names, &model_col, &REQUEST_STATUS);
    for c in &mut cols {
        if c.0 == "cached_tokens" {
            c.1 = ColType::OptI64;
        }
    }
    use ColType::*;
    cols.extend([
        ("attempt", U32),
        ("scheduled_ns", I64),
        ("send_ns", I64),
        ("send_lag_ns", I64),
        ("client_ttft_ns", OptI64),
        ("client_e2e_ns", OptI64),
        ("max_tokens", U32),
        ("server_prompt_tokens", OptI64),
        ("chunks", U32),
        ("http_status", OptI64),
        ("error", ColType::Str(errors.clone())),
        ("segment", U32),
    ]);
    let mut t = Table::create(&dir.join("requests.parquet"), &cols)?;
    let eng = |n: &str| -> Result<u32> {
        engine_names
            .iter()
            .position(|x| x == n)
            .map(|i| i as u32)
            .ok_or_else(|| Error::bad(format!("record names engine `{n}`, which is not in ENDPOINTS.yaml")))
    };
    let model = |n: &str| -> Result<u32> {
        models
            .iter()
            .position(|x| x == n)
            .map(|i| i as u32)
            .ok_or_else(|| Error::bad(format!("record names model `{n}`, which is not in the scenario")))
    };
    for r in requests {
        let status = r.status;
        let row = RequestRow {
            request_id: r.request_id,
            workflow_id: r.workflow_id,
            stage: r.stage,
            engine: eng(&r.engine)?,
            model: model(&r.model)?,
            status,
            priority: r.priority,
            arrival_ns: r.arrival_ns,
            dispatch_ns: r.send_ns,
            first_scheduled_ns: None,
            first_token_ns: r.first_token_ns,
            finish_ns: r.finish_ns,
            queue_ns: None,
            prompt_tokens: r.prompt_tokens,
            context_tokens: r.context_tokens,
            output_tokens: r.output_tokens,
            preemptions: 0,
            cached_tokens: r.cached_tokens,
        };
        let mut vals: Vec<(&str, Val)> = row.named(true).to_vec();
        vals.extend([
            ("attempt", Val::U32(r.attempt)),
            ("scheduled_ns", Val::I64(r.scheduled_ns)),
            ("send_ns", Val::I64(r.send_ns)),
            ("send_lag_ns", Val::I64(r.send_ns - r.scheduled_ns)),
            ("client_ttft_ns", Val::OptI64(r.first_token_ns.map(|f| f - r.send_ns))),
            ("client_e2e_ns", Val::OptI64(r.finish_ns.map(|f| f - r.send_ns))),
            ("max_tokens", Val::U32(r.max_tokens)),
            (
                "server_prompt_tokens",
                Val::OptI64(r.server_prompt_tokens.map(i64::from)),
            ),
            ("chunks", Val::U32(r.chunk_ns.len() as u32)),
            ("http_status", Val::OptI64(r.http_status.map(i64::from))),
            ("error", Val::Str(index_of(&errors, r.error.as_deref().unwrap_or("")))),
            ("segment", Val::U32(r.segment)),
        ]);
        t.push_named(&vals)?;
        // The wait a replay sees: from the stage being ready to the request being sent.
        agg.add_request(&row, Some(r.send_ns - r.arrival_ns));
    }
    t.finish()?;

    let mut cols = workflow_columns(&names, &model_col, &WORKFLOW_STATUS);
    cols.extend([("error", ColType::Str(errors.clone())), ("segment", U32)]);
    let mut t = Table::create(&dir.join("workflows.parquet"), &cols)?;
    for w in workflows {
        let m = model(&w.model)?;
        let outcome = WorkflowOutcome {
            id: w.workflow_id,
            engine: eng(&w.engine)?,
            arrival_ns: w.arrival_ns,
            finish_ns: w.finish_ns,
            stages: w.stages,
            prompt_tokens: w.prompt_tokens,
            output_tokens: w.output_tokens,
            preemptions: 0,
            success: w.success,
            error: (w.status != WorkflowStatus::Ok).then(|| w.error.clone().unwrap_or_default()),
            confidence: w
                .confidence
                .iter()
                .map(|(m, c, s)| (std::sync::Arc::from(m.as_str()), *c, *s))
                .collect(),
        };
        let mut vals: Vec<(&str, Val)> = workflow_row(&outcome, m).to_vec();
        vals.extend([
            ("error", Val::Str(index_of(&errors, w.error.as_deref().unwrap_or("")))),
            ("segment", Val::U32(w.segment)),
        ]);
        t.push_named(&vals)?;
        agg.add_workflow(m, &outcome);
    }
    t.finish()?;

    let mut t = Table::create(
        &dir.join("itl.parquet"),
        &[
            ("request_id", U64),
            ("attempt", U32),
            ("chunk", U32),
            ("since_send_ns", I64),
            ("gap_ns", OptI64),
        ],
    )?;
    for r in requests.iter().filter(|r| r.status == RequestStatus::Ok) {
        let mut prev = None;
        for (k, &at) in r.chunk_ns.iter().enumerate() {
            t.push(&[
                Val::U64(r.request_id),
                Val::U32(r.attempt),
                Val::U32(k as u32),
                Val::I64(at),
                Val::OptI64(prev.map(|p| at - p)),
            ])?;
            prev = Some(at);
        }
    }
    t.finish()?;

    let merrors = distinct(metrics.iter().filter_map(|m| m.error.as_deref()), &[""]);
    let mut t = Table::create(
        &dir.join("metrics.parquet"),
        &[
            ("engine", names),
            ("t_ns", I64),
            ("running", F64),
            ("waiting", F64),
            ("kv_usage", F64),
            ("prompt_tokens_total", F64),
            ("generation_tokens_total", F64),
            ("preemptions_total", F64),
            ("prefix_cache_queries_total", F64),
            ("prefix_cache_hits_total", F64),
            (
                "error",
                str_col(&merrors.iter().map(String::as_str).collect::<Vec<_>>()),
            ),
        ],
    )?;
    for m in metrics {
        t.push(&[
            Val::Str(eng(&m.engine)?),
            Val::I64(m.t_ns),
            Val::F64(m.sample.running),
            Val::F64(m.sample.waiting),
            Val::F64(m.sample.kv_usage),
            Val::F64(m.sample.prompt_tokens_total),
            Val::F64(m.sample.generation_tokens_total),
            Val::F64(m.sample.preemptions_total),
            Val::F64(m.sample.prefix_cache_queries_total),
            Val::F64(m.sample.prefix_cache_hits_total),
            Val::Str(index_of(&merrors, m.error.as_deref().unwrap_or(""))),
        ])?;
    }
    t.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_dropped_and_a_bad_middle_line_is_an_error() {
        let dir = std::env::temp_dir().join(format!("chimera-records-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.jsonl");
        std::fs::write(&p, "{\"t_ns\":1}\n{\"t_ns\":2}\n{\"t_n").unwrap();
        #[derive(Deserialize)]
        struct R {
            t_ns: i64,
        }
        let v: Vec<R> = read_lines(&p).unwrap();
        assert_eq!(v.iter().map(|r| r.t_ns).collect::<Vec<_>>(), [1, 2]);
        repair_tail(&p).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"t_ns\":1}\n{\"t_ns\":2}\n");
        std::fs::write(&p, "{\"t_ns\":1}\nnot json\n{\"t_ns\":2}\n").unwrap();
        let e = read_lines::<R>(&p).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("a.jsonl: line 2"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
