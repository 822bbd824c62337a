//! The workflow trace file, `chimera-trace/v1`: one Parquet table, one row per (workflow,
//! candidate model, stage), documented in traces/README.md.
//!
//! Traces are counterfactual: every workflow has a plan for every candidate model, and the
//! simulation realises the one the policy picks. Loading checks everything and names the file,
//! the row (1-based, in file order) and the column of the first problem it finds.

use crate::error::{Error, Result};
use crate::workload::{Plan, Stage};
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, UInt32Array,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, UInt32Type, UInt64Type};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub const TRACE_FORMAT: &str = "chimera-trace/v1";
pub const FORMAT_KEY: &str = "chimera.trace.format";
pub const PROVENANCE_KEY: &str = "chimera.trace.provenance";

/// One workflow of a trace, with a plan per candidate model.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceWorkflow {
    pub id: u64,
    pub task: String,
    pub problem_id: String,
    pub difficulty: String,
    pub text: Option<Arc<str>>,
    /// One per candidate model, in the trace's model order; every plan has `success`.
    pub plans: Vec<Plan>,
}

/// A loaded trace.
#[derive(Debug, Clone)]
pub struct Trace {
    pub models: Vec<String>,
    pub workflows: Vec<TraceWorkflow>,
    pub provenance: serde_json::Value,
}

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("workflow_id", DataType::UInt64, false),
        Field::new("task", DataType::Utf8, false),
        Field::new("problem_id", DataType::Utf8, false),
        Field::new("difficulty", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("stage", DataType::UInt32, false),
        Field::new("stages", DataType::UInt32, false),
        Field::new("role", DataType::Utf8, false),
        Field::new("prompt_tokens", DataType::Int64, false),
        Field::new("context_tokens", DataType::Int64, false),
        Field::new("output_tokens", DataType::Int64, false),
        Field::new("tool_delay_ms", DataType::Float64, false),
        Field::new("solved", DataType::Boolean, true),
        Field::new("text", DataType::Utf8, true),
    ])
}

/// The role of stage `k` of `n`: reason-and-act calls, then the final answer.
pub fn role(k: usize, n: usize) -> &'static str {
    if k + 1 == n {
        "answer"
    } else {
        "reason_act"
    }
}

/// Write a trace. Rows are ordered by workflow, then model (trace order), then stage.
pub fn write_trace(path: &Path, t: &Trace) -> Result<()> {
    let mut c = Cols::default();
    for w in &t.workflows {
        for p in &w.plans {
            let n = p.stages.len();
            for (k, s) in p.stages.iter().enumerate() {
                c.workflow_id.push(w.id);
                c.task.push(w.task.clone());
                c.problem_id.push(w.problem_id.clone());
                c.difficulty.push(w.difficulty.clone());
                c.model.push(p.model.as_deref().unwrap_or("").to_string());
                c.stage.push(k as u32);
                c.stages.push(n as u32);
                c.role.push(role(k, n));
                c.prompt.push(s.prompt_tokens as i64);
                c.context.push(s.context_tokens as i64);
                c.output.push(s.output_tokens as i64);
                c.delay.push(s.tool_delay_ns as f64 / 1e6);
                c.solved.push(p.success);
                c.text.push(if k == 0 {
                    w.text.as_deref().map(str::to_string)
                } else {
                    None
                });
            }
        }
    }
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(c.workflow_id)),
        Arc::new(StringArray::from(c.task)),
        Arc::new(StringArray::from(c.problem_id)),
        Arc::new(StringArray::from(c.difficulty)),
        Arc::new(StringArray::from(c.model)),
        Arc::new(UInt32Array::from(c.stage)),
        Arc::new(UInt32Array::from(c.stages)),
        Arc::new(StringArray::from(c.role)),
        Arc::new(Int64Array::from(c.prompt)),
        Arc::new(Int64Array::from(c.context)),
        Arc::new(Int64Array::from(c.output)),
        Arc::new(Float64Array::from(c.delay)),
        Arc::new(BooleanArray::from(c.solved)),
        Arc::new(StringArray::from(c.text)),
    ];
    let batch = RecordBatch::try_new(Arc::new(schema()), arrays)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by(format!("chimera {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(Some(vec![
            KeyValue::new(FORMAT_KEY.to_string(), TRACE_FORMAT.to_string()),
            KeyValue::new(
                PROVENANCE_KEY.to_string(),
                serde_json::to_string(&t.provenance).expect("json"),
            ),
        ]))
        .build();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
    w.write(&batch)?;
    w.close()?;
    Ok(())
}

#[derive(Default)]
struct Cols {
    workflow_id: Vec<u64>,
    task: Vec<String>,
    problem_id: Vec<String>,
    difficulty: Vec<String>,
    model: Vec<String>,
    stage: Vec<u32>,
    stages: Vec<u32>,
    role: Vec<&'static str>,
    prompt: Vec<i64>,
    context: Vec<i64>,
    output: Vec<i64>,
    delay: Vec<f64>,
    solved: Vec<Option<bool>>,
    text: Vec<Option<String>>,
}

struct Row {
    wf: u64,
    task: String,
    problem: String,
    difficulty: String,
    model: String,
    stage: u32,
    stages: u32,
    prompt: i64,
    context: i64,
    output: i64,
    delay_ms: f64,
    solved: Option<bool>,
    text: Option<String>,
}

/// Load and check a trace.
pub fn read_trace(path: &Path) -> Result<Trace> {
    let p = path.display();
    let builder = crate::input::open_parquet(path)?;
    let kv = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    let get = |k: &str| kv.iter().find(|x| x.key == k).and_then(|x| x.value.clone());
    match get(FORMAT_KEY) {
        Some(f) if f == TRACE_FORMAT => {}
        Some(f) => {
            return Err(Error::bad(format!(
                "{p}: trace format `{f}`, this build reads `{TRACE_FORMAT}`"
            )))
        }
        None => {
            return Err(Error::bad(format!(
                "{p}: no `{FORMAT_KEY}` metadata; not a chimera trace (expected {TRACE_FORMAT})"
            )))
        }
    }
    let provenance = get(PROVENANCE_KEY)
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null);
    let file_schema = builder.schema().clone();
    for f in schema().fields() {
        match file_schema.field_with_name(f.name()) {
            Err(_) => {
                return Err(Error::bad(format!(
                    "{p}: missing column `{}` ({})",
                    f.name(),
                    f.data_type()
                )))
            }
            Ok(have) if have.data_type() != f.data_type() => {
                return Err(Error::bad(format!(
                    "{p}: column `{}`: expected type {}, found {}",
                    f.name(),
                    f.data_type(),
                    have.data_type()
                )))
            }
            Ok(_) => {}
        }
    }
    let reader = builder
        .build()
        .map_err(|e| Error::bad(format!("{p}: damaged Parquet data: {}", crate::error::short_cause(&e))))?;
    let mut rows = Vec::new();
    for batch in reader {
        let b =
            batch.map_err(|e| Error::bad(format!("{p}: damaged Parquet data: {}", crate::error::short_cause(&e))))?;
        let s = |n: &str| b.column_by_name(n).expect("checked").as_string::<i32>().clone();
        let (task, problem, diff, model, text) = (s("task"), s("problem_id"), s("difficulty"), s("model"), s("text"));
        let wf = b
            .column_by_name("workflow_id")
            .unwrap()
            .as_primitive::<UInt64Type>()
            .clone();
        let stage = b.column_by_name("stage").unwrap().as_primitive::<UInt32Type>().clone();
        let stages = b.column_by_name("stages").unwrap().as_primitive::<UInt32Type>().clone();
        let i64c = |n: &str| b.column_by_name(n).unwrap().as_primitive::<Int64Type>().clone();
        let (prompt, context, output) = (i64c("prompt_tokens"), i64c("context_tokens"), i64c("output_tokens"));
        let delay = b
            .column_by_name("tool_delay_ms")
            .unwrap()
            .as_primitive::<Float64Type>()
            .clone();
        let solved = b.column_by_name("solved").unwrap().as_boolean().clone();
        for i in 0..b.num_rows() {
            let row_no = rows.len() + 1;
            for (name, arr) in [
                ("workflow_id", &wf as &dyn Array),
                ("stage", &stage),
                ("stages", &stages),
                ("prompt_tokens", &prompt),
                ("context_tokens", &context),
                ("output_tokens", &output),
                ("tool_delay_ms", &delay),
                ("task", &task),
                ("model", &model),
            ] {
                if arr.is_null(i) {
                    return Err(Error::bad(format!("{p}: row {row_no}: column {name}: missing value")));
                }
            }
            rows.push(Row {
                wf: wf.value(i),
                task: task.value(i).to_string(),
                problem: if problem.is_null(i) {
                    String::new()
                } else {
                    problem.value(i).to_string()
                },
                difficulty: if diff.is_null(i) {
                    String::new()
                } else {
                    diff.value(i).to_string()
                },
                model: model.value(i).to_string(),
                stage: stage.value(i),
                stages: stages.value(i),
                prompt: prompt.value(i),
                context: context.value(i),
                output: output.value(i),
                delay_ms: delay.value(i),
                solved: (!solved.is_null(i)).then(|| solved.value(i)),
                text: (!text.is_null(i)).then(|| text.value(i).to_string()),
            });
        }
    }
    build(path, rows, provenance)
}

fn build(path: &Path, rows: Vec<Row>, provenance: serde_json::Value) -> Result<Trace> {
    let p = path.display();
    if rows.is_empty() {
        return Err(Error::bad(format!("{p}: the trace has no rows")));
    }
    let mut models: Vec<String> = Vec::new();
    // workflow -> model -> [(row number, row)]
    let mut by_wf: BTreeMap<u64, BTreeMap<String, Vec<(usize, &Row)>>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        let n = i + 1;
        let at = |col: &str, msg: String| Error::bad(format!("{p}: row {n}: column {col}: {msg}"));
        for (col, v) in [
            ("prompt_tokens", r.prompt),
            ("context_tokens", r.context),
            ("output_tokens", r.output),
        ] {
            if v < 0 {
                return Err(at(col, format!("negative token count {v}")));
            }
        }
        if r.prompt == 0 {
            return Err(at("prompt_tokens", "a stage needs at least one prompt token".into()));
        }
        if r.output == 0 {
            return Err(at("output_tokens", "a stage needs at least one output token".into()));
        }
        if r.context > r.prompt {
            return Err(at(
                "context_tokens",
                format!("{} context tokens exceed the prompt's {}", r.context, r.prompt),
            ));
        }
        for (col, v) in [("prompt_tokens", r.prompt), ("output_tokens", r.output)] {
            crate::workload::check_tokens(v as u64).map_err(|e| at(col, e))?;
        }
        if !(r.delay_ms >= 0.0 && r.delay_ms <= crate::time::MAX_DIST_VALUE) {
            return Err(at(
                "tool_delay_ms",
                format!(
                    "expected 0 to {:e} milliseconds, got {}",
                    crate::time::MAX_DIST_VALUE,
                    r.delay_ms
                ),
            ));
        }
        if r.model.is_empty() {
            return Err(at("model", "empty model name".into()));
        }
        if r.solved.is_none() {
            return Err(at(
                "solved",
                format!("workflow {} has no outcome for model {}", r.wf, r.model),
            ));
        }
        if r.stages > crate::workload::MAX_STAGES {
            return Err(at(
                "stages",
                format!(
                    "{} stages; a workflow may have at most {}",
                    r.stages,
                    crate::workload::MAX_STAGES
                ),
            ));
        }
        if r.stages == 0 || r.stage >= r.stages {
            return Err(at(
                "stage",
                format!("stage {} is not below the workflow's {} stages", r.stage, r.stages),
            ));
        }
        if !models.contains(&r.model) {
            models.push(r.model.clone());
        }
        by_wf
            .entry(r.wf)
            .or_default()
            .entry(r.model.clone())
            .or_default()
            .push((n, r));
    }
    let mut workflows = Vec::with_capacity(by_wf.len());
    for (wf, per_model) in by_wf {
        let (first_row, first) = per_model.values().next().expect("non-empty")[0];
        let mut plans = Vec::new();
        let mut text = None;
        for m in &models {
            let Some(rs) = per_model.get(m) else {
                return Err(Error::bad(format!(
                    "{p}: row {first_row}: column model: workflow {wf} has no rows for model {m}; every workflow needs a plan for every model in the trace"
                )));
            };
            let mut rs = rs.clone();
            rs.sort_by_key(|(_, r)| r.stage);
            let n = rs[0].1.stages as usize;
            let mut stages = Vec::with_capacity(n);
            for (k, (row, r)) in rs.iter().enumerate() {
                if r.stage as usize != k || r.stages as usize != n {
                    return Err(Error::bad(format!(
                        "{p}: row {row}: column stage: workflow {wf}, model {m}: stages must be 0..{n} once each (found stage {} of {})",
                        r.stage, r.stages
                    )));
                }
                if r.solved != rs[0].1.solved {
                    return Err(Error::bad(format!("{p}: row {row}: column solved: workflow {wf}, model {m}: the outcome differs between its stages")));
                }
                for (col, a, b) in [
                    ("task", &r.task, &first.task),
                    ("problem_id", &r.problem, &first.problem),
                    ("difficulty", &r.difficulty, &first.difficulty),
                ] {
                    if a != b {
                        return Err(Error::bad(format!(
                            "{p}: row {row}: column {col}: workflow {wf} has `{a}` here but `{b}` in row {first_row}"
                        )));
                    }
                }
                if text.is_none() {
                    text = r.text.clone();
                }
                stages.push(Stage {
                    prompt_tokens: r.prompt as u32,
                    context_tokens: r.context as u32,
                    output_tokens: r.output as u32,
                    tool_delay_ns: (r.delay_ms * 1e6).round() as i64,
                    prefix: None,
                    prompt_id: None,
                });
            }
            if rs.len() != n {
                return Err(Error::bad(format!(
                    "{p}: row {}: column stage: workflow {wf}, model {m}: {} rows for {n} stages",
                    rs[0].0,
                    rs.len()
                )));
            }
            plans.push(Plan {
                model: Some(Arc::from(m.as_str())),
                stages,
                success: rs[0].1.solved,
            });
        }
        workflows.push(TraceWorkflow {
            id: wf,
            task: first.task.clone(),
            problem_id: first.problem.clone(),
            difficulty: first.difficulty.clone(),
            text: text.map(|t| Arc::from(t.as_str())),
            plans,
        });
    }
    Ok(Trace {
        models,
        workflows,
        provenance,
    })
}

/// Read several traces as one (workflow ids renumbered in order). With `same_models`, every
/// trace must have the first one's models, in its order.
pub fn read_traces(paths: &[std::path::PathBuf], same_models: bool) -> Result<Trace> {
    let first = paths
        .first()
        .ok_or_else(|| crate::error::Error::bad("--trace: give at least one trace"))?;
    let mut all = read_trace(first)?;
    for p in &paths[1..] {
        let t = read_trace(p)?;
        if same_models && t.models != all.models {
            return Err(crate::error::Error::bad(format!(
                "--trace {}: models {} differ from {}'s {}",
                p.display(),
                t.models.join(", "),
                first.display(),
                all.models.join(", ")
            )));
        }
        let base = all.workflows.len() as u64;
        all.workflows.extend(t.workflows.into_iter().map(|mut w| {
            w.id += base;
            w
        }));
    }
    Ok(all)
}
