//! Parameter sweeps: the cross product of scenario overrides, run in parallel with results
//! identical to a serial run, resumable, and shardable over many machines.
//!
//! A sweep is one base scenario, base overrides, a number of seeds, and one or more *series*
//! (a label, the series' own overrides and a grid of `path -> values`). Its points are, series
//! by series, the cross product of the grid (last path fastest) times the seeds; a point's
//! index is its place in that order and never depends on threads or shards. Each finished
//! point is appended to `points.jsonl` at once (so an interrupted sweep loses nothing and
//! `--resume` skips what is there), and `sweep.parquet` is written from those records in point
//! order at the end. A shard runs the points whose index modulo n is i; `merge` joins shard
//! folders into the same table an unsharded run writes.

pub mod table;

use crate::error::{Error, Result};
use crate::scenario::{self, DEFAULT_SCENARIO};
use crate::sim::Simulation;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

pub const SWEEP_FORMAT: &str = "chimera-sweep/v1";

/// One series: a label, its own overrides and its grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Series {
    pub label: String,
    #[serde(default)]
    pub sets: Vec<String>,
    /// Grid paths and their values (YAML values; maps and lists allowed).
    #[serde(default)]
    pub grid: Vec<GridAxis>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridAxis {
    pub path: String,
    pub values: Vec<String>,
}

/// What a sweep runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// The base scenario file; None: the embedded default scenario.
    pub scenario: Option<PathBuf>,
    #[serde(default)]
    pub sets: Vec<String>,
    pub seeds: u32,
    pub series: Vec<Series>,
}

/// One run of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub index: u64,
    pub series: usize,
    /// One value per axis of the point's series.
    pub values: Vec<String>,
    pub seed: u64,
}

/// A finished point as stored in `points.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub point: u64,
    pub label: String,
    pub seed: u64,
    pub params: BTreeMap<String, String>,
    /// Summary metrics flattened to `a.b.c` keys, in the summary's order.
    pub metrics: Vec<(String, Value)>,
    /// FNV-1a of the record's JSON with this field empty: a line edited by hand or damaged on
    /// disk is found when the sweep is resumed or merged, instead of entering the table.
    #[serde(default)]
    pub check: String,
}

impl Record {
    fn digest(&self) -> String {
        let mut bare = self.clone();
        bare.check.clear();
        let text = serde_json::to_string(&bare).expect("record serialises");
        format!("{:016x}", crate::rng::fnv1a64(text.as_bytes()))
    }

    /// Set `check` from the rest of the record.
    pub fn seal(mut self) -> Record {
        self.check = self.digest();
        self
    }

    /// Whether `check` matches the rest of the record.
    pub fn intact(&self) -> bool {
        self.check == self.digest()
    }

    /// The record's identity as the plan defines it: the point's series label, seed and
    /// parameter values. A kept record whose identity is not its point's is refused.
    fn identity_matches(&self, spec: &SweepSpec, p: &Point) -> bool {
        let s = &spec.series[p.series];
        self.point == p.index
            && self.label == s.label
            && self.seed == p.seed
            && self.params.len() == s.grid.len()
            && s.grid
                .iter()
                .zip(&p.values)
                .all(|(a, v)| self.params.get(&a.path) == Some(v))
    }
}

/// Check kept records against the plan's points: each names a point of the plan and carries
/// that point's label, seed and parameters.
fn verify_records(recs: &[Record], points: &[Point], spec: &SweepSpec, origin: &Path) -> Result<()> {
    for r in recs {
        let ok = usize::try_from(r.point)
            .ok()
            .and_then(|i| points.get(i))
            .is_some_and(|p| r.identity_matches(spec, p));
        if !ok {
            return Err(Error::bad(format!(
                "{}: the record of point {} does not match the plan's point {} (label, seed or parameters differ, or no such point); the file was edited or belongs to another plan: remove that line to rerun the point",
                origin.display(),
                r.point,
                r.point
            )));
        }
    }
    Ok(())
}

/// Split `path=v1,v2,...` at commas outside brackets, braces and quotes.
pub fn parse_grid(arg: &str) -> Result<GridAxis> {
    let (path, vals) = arg
        .split_once('=')
        .ok_or_else(|| Error::bad(format!("--grid {arg}: expected path=v1,v2,...")))?;
    let mut values = Vec::new();
    let (mut depth, mut quote, mut cur) = (0i32, None::<char>, String::new());
    for c in vals.chars() {
        match (c, quote) {
            ('"' | '\'', None) => quote = Some(c),
            (q, Some(open)) if q == open => quote = None,
            ('{' | '[', None) => depth += 1,
            ('}' | ']', None) => depth -= 1,
            (',', None) if depth == 0 => {
                values.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    values.push(cur.trim().to_string());
    if path.trim().is_empty() || values.iter().any(|v| v.is_empty()) {
        return Err(Error::bad(format!(
            "--grid {arg}: expected path=v1,v2,... with no empty value"
        )));
    }
    Ok(GridAxis {
        path: path.trim().to_string(),
        values,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    #[serde(default)]
    scenario: Option<String>,
    #[serde(default)]
    sets: Vec<String>,
    #[serde(default = "one")]
    seeds: u32,
    series: Vec<PlanSeries>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanSeries {
    label: String,
    #[serde(default)]
    sets: Vec<String>,
    #[serde(default)]
    grid: BTreeMap<String, Vec<serde_json::Value>>,
}

/// A YAML value as override text (`0.5`, `fcfs`, `{a: 1}`), JSON for maps and lists.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl SweepSpec {
    /// Read a sweep plan (YAML): `scenario` (relative to the plan), `sets`, `seeds`, and
    /// `series: [{label, sets, grid: {path: [values]}}]`.
    pub fn load_plan(path: &Path) -> Result<SweepSpec> {
        let text = crate::input::read_text(&path)?;
        let plan: PlanFile =
            scenario::yaml::from_yaml_str(&text).map_err(|e| e.context(format!("plan {}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let spec = SweepSpec {
            scenario: plan.scenario.map(|s| base.join(s)),
            sets: plan.sets,
            seeds: plan.seeds,
            series: plan
                .series
                .into_iter()
                .map(|s| Series {
                    label: s.label,
                    sets: s.sets,
                    grid: s
                        .grid
                        .into_iter()
                        .map(|(path, values)| GridAxis {
                            path,
                            values: values.iter().map(value_text).collect(),
                        })
                        .collect(),
                })
                .collect(),
        };
        spec.validate()
            .map_err(|e| e.context(format!("plan {}", path.display())))?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<()> {
        if self.seeds == 0 {
            return Err(Error::bad("seeds: expected at least 1"));
        }
        if self.seeds > 100_000 {
            return Err(Error::bad(format!(
                "seeds: expected at most 100000, got {}",
                self.seeds
            )));
        }
        if self.series.is_empty() {
            return Err(Error::bad("series: a sweep needs at least one series"));
        }
        // Points are listed in memory before any runs: bound their number first.
        let points: f64 = self
            .series
            .iter()
            .map(|s| s.grid.iter().map(|a| a.values.len() as f64).product::<f64>())
            .sum::<f64>()
            * self.seeds as f64;
        if points > 1e6 {
            return Err(Error::bad(format!(
                "the sweep has {points:e} points (grid values multiplied, times seeds); at most 1000000"
            )));
        }
        let mut labels = HashSet::new();
        for (i, s) in self.series.iter().enumerate() {
            if !labels.insert(&s.label) {
                return Err(Error::bad(format!("series[{i}].label: `{}` is used twice", s.label)));
            }
            for (j, a) in s.grid.iter().enumerate() {
                // The point's seed is set last (from --seeds): a grid over it would be overridden.
                if a.path == "seed" {
                    return Err(Error::bad(format!(
                        "series[{i}].grid[seed]: seeds come from `--seeds N` (the scenario's seed, +1, +2, ...), not from the grid"
                    )));
                }
                if a.values.is_empty() {
                    return Err(Error::bad(format!("series[{i}].grid[{}]: no values", a.path)));
                }
                if s.grid[..j].iter().any(|b| b.path == a.path) {
                    return Err(Error::bad(format!("series[{i}].grid: `{}` appears twice", a.path)));
                }
            }
        }
        Ok(())
    }

    fn scenario_text(&self) -> Result<(String, PathBuf)> {
        match &self.scenario {
            None => Ok((DEFAULT_SCENARIO.to_string(), PathBuf::from("."))),
            Some(p) => Ok((
                crate::input::read_text(&p)?,
                p.parent().unwrap_or(Path::new(".")).to_path_buf(),
            )),
        }
    }

    /// The base seed: the scenario's own after the base overrides.
    fn base_seed(&self) -> Result<u64> {
        let (text, dir) = self.scenario_text()?;
        Ok(scenario::load_str(&text, &self.sets, &dir)?.scenario.seed)
    }

    /// Every point, in index order.
    pub fn points(&self) -> Result<Vec<Point>> {
        let base = self.base_seed()?;
        let mut out = Vec::new();
        for (si, s) in self.series.iter().enumerate() {
            let mut combos: Vec<Vec<String>> = vec![Vec::new()];
            for axis in &s.grid {
                combos = combos
                    .into_iter()
                    .flat_map(|c| {
                        axis.values.iter().map(move |v| {
                            let mut c = c.clone();
                            c.push(v.clone());
                            c
                        })
                    })
                    .collect();
            }
            for values in combos {
                for k in 0..self.seeds as u64 {
                    out.push(Point {
                        index: out.len() as u64,
                        series: si,
                        values: values.clone(),
                        seed: base + k,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Every grid path over all series, in first-appearance order.
    pub fn param_paths(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in &self.series {
            for a in &s.grid {
                if !out.contains(&a.path) {
                    out.push(a.path.clone());
                }
            }
        }
        out
    }

    /// A fingerprint of everything that decides the results (the scenario's text included).
    pub fn fingerprint(&self) -> Result<String> {
        let (text, _) = self.scenario_text()?;
        let spec = serde_json::to_string(self).map_err(|e| Error::other(e.to_string()))?;
        let key = format!(
            "{}\n{}\n{}\n{}",
            crate::run::VERSION,
            crate::run::GIT_COMMIT,
            text,
            spec
        );
        Ok(format!("{:016x}", crate::rng::fnv1a64(key.as_bytes())))
    }

    /// The overrides of one point: base, series, grid values, then the seed.
    pub fn point_sets(&self, p: &Point) -> Vec<String> {
        let s = &self.series[p.series];
        let mut sets = self.sets.clone();
        sets.extend(s.sets.iter().cloned());
        for (axis, v) in s.grid.iter().zip(&p.values) {
            sets.push(format!("{}={}", axis.path, v));
        }
        sets.push(format!("seed={}", p.seed));
        sets
    }

    /// Resolve every point (cheap) so that a bad value fails before anything runs.
    pub fn check_points(&self, points: &[Point]) -> Result<()> {
        let (text, dir) = self.scenario_text()?;
        let mut seen = HashSet::new();
        for p in points {
            // Seeds do not change validity: check each combination once.
            if !seen.insert((p.series, p.values.clone())) {
                continue;
            }
            scenario::load_str(&text, &self.point_sets(p), &dir).map_err(|e| {
                e.context(format!(
                    "sweep point {} (series `{}`)",
                    p.index, self.series[p.series].label
                ))
            })?;
        }
        Ok(())
    }

    /// Run one point in memory and return its record.
    pub fn run_point(&self, p: &Point) -> Result<Record> {
        let (text, dir) = self.scenario_text()?;
        let r = scenario::load_str(&text, &self.point_sets(p), &dir)?;
        let rep = Simulation::summary_only(&r)?.run(&mut |_, _| {})?;
        let summary = crate::run::summary_json(&rep);
        let mut metrics = Vec::new();
        flatten("", &summary, &mut metrics);
        let s = &self.series[p.series];
        Ok(Record {
            point: p.index,
            label: s.label.clone(),
            seed: p.seed,
            params: s
                .grid
                .iter()
                .zip(&p.values)
                .map(|(a, v)| (a.path.clone(), v.clone()))
                .collect(),
            metrics,
            check: String::new(),
        }
        .seal())
    }
}

/// Flatten a summary into `a.b.c` keys; list entries are keyed by their `name` (engines: two
/// engines may serve one model, so their model and GPU are columns of their own) or, without
/// one, their `model` (`by_model`).
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                flatten(&key(k), x, out);
            }
        }
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                let (id_key, id) = ["name", "model"]
                    .iter()
                    .find_map(|k| x.get(*k).and_then(|s| s.as_str()).map(|s| (*k, s.to_string())))
                    .unwrap_or(("", i.to_string()));
                let mut sub = Vec::new();
                flatten("", x, &mut sub);
                for (k, val) in sub {
                    if k != id_key {
                        out.push((format!("{}.{id}.{k}", prefix), val));
                    }
                }
            }
        }
        Value::Number(_) | Value::String(_) | Value::Bool(_) => out.push((prefix.to_string(), v.clone())),
        Value::Null => {}
    }
}

/// `--shard i/n`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    pub fn parse(s: &str) -> Result<Shard> {
        let bad = || Error::bad(format!("--shard {s}: expected i/n with 0 <= i < n"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse::<u64>().map_err(|_| bad())?,
            n.trim().parse::<u64>().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
    pub fn owns(&self, p: &Point) -> bool {
        p.index % self.count == self.index
    }
}

/// The header of a sweep folder (`sweep.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepHeader {
    pub format: String,
    pub fingerprint: String,
    pub spec: SweepSpec,
    pub points: u64,
    pub shard: Option<Shard>,
    pub chimera_version: String,
    pub git_commit: String,
}

/// Read the records of `dir/points.jsonl` (a torn last line from a killed run is ignored).
pub fn read_records(dir: &Path) -> Result<Vec<Record>> {
    let path = dir.join("points.jsonl");
    if !path.exists() {
        return Ok(Vec::new());
    }
    let f = crate::input::open(&path)?;
    let lines: Vec<String> = std::io::BufReader::new(f)
        .lines()
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io(&path, e))?;
    let n = lines.len();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line) {
            Ok(r) if !r.intact() => {
                let why = if r.check.is_empty() {
                    "has no check (written by an older chimera, or the field was removed)"
                } else {
                    "was edited or damaged (its check does not match its content)"
                };
                return Err(Error::bad(format!(
                    "{}: line {}: the record of point {} {why}; remove the line to rerun the point",
                    path.display(),
                    i + 1,
                    r.point
                )));
            }
            Ok(r) => out.push(r),
            Err(_) if i + 1 == n => {} // the line being written when the run was killed
            Err(e) => {
                return Err(Error::bad(format!(
                    "{}: line {}: not a sweep record: {e}",
                    path.display(),
                    i + 1
                )))
            }
        }
    }
    Ok(out)
}

fn read_header(dir: &Path) -> Result<Option<SweepHeader>> {
    let p = dir.join("sweep.json");
    match crate::input::read_text_if_exists(&p)? {
        Some(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| Error::bad(format!("{}: not a sweep header: {e}", p.display()))),
        None => Ok(None),
    }
}

/// Options of one sweep run.
pub struct RunOptions {
    pub jobs: usize,
    pub shard: Option<Shard>,
    pub resume: bool,
}

/// What a sweep run did.
#[derive(Debug, Clone)]
pub struct SweepReport {
    pub total: u64,
    pub skipped: u64,
    pub ran: u64,
    pub table: PathBuf,
}

/// Run (or resume) a sweep into `dir`. `progress(done, total)` is called as points finish.
pub fn run(spec: &SweepSpec, dir: &Path, opts: &RunOptions, progress: &mut dyn FnMut(u64, u64)) -> Result<SweepReport> {
    spec.validate()?;
    let all = spec.points()?;
    let mine: Vec<Point> = all
        .iter()
        .filter(|p| opts.shard.is_none_or(|s| s.owns(p)))
        .cloned()
        .collect();
    spec.check_points(&mine)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let header = SweepHeader {
        format: SWEEP_FORMAT.into(),
        fingerprint: spec.fingerprint()?,
        spec: spec.clone(),
        points: all.len() as u64,
        shard: opts.shard,
        chimera_version: crate::run::VERSION.into(),
        git_commit: crate::run::GIT_COMMIT.into(),
    };
    let done: Vec<Record> = match read_header(dir)? {
        Some(old) if opts.resume => {
            if old.fingerprint != header.fingerprint || old.shard != header.shard {
                return Err(Error::bad(format!(
                    "--resume: {} holds another sweep (fingerprint {}, shard {:?}); this one is {} (shard {:?})",
                    dir.display(),
                    old.fingerprint,
                    old.shard,
                    header.fingerprint,
                    header.shard
                )));
            }
            let kept = read_records(dir)?;
            verify_records(&kept, &all, spec, &dir.join("points.jsonl"))?;
            kept
        }
        Some(_) => {
            return Err(Error::bad(format!(
                "{} already holds a sweep: pass --resume to continue it, or choose another --out",
                dir.display()
            )))
        }
        None => Vec::new(),
    };
    let text = serde_json::to_string_pretty(&header).map_err(|e| Error::other(e.to_string()))?;
    crate::output::write_atomic(&dir.join("sweep.json"), text.as_bytes())?;
    let jsonl = dir.join("points.jsonl");
    if !done.is_empty() {
        // Rewrite the kept records so that a line torn by a kill does not sit before new ones.
        let mut text = String::new();
        for r in &done {
            text += &serde_json::to_string(r).expect("record serialises");
            text.push('\n');
        }
        crate::output::write_atomic(&jsonl, text.as_bytes())?;
    }
    let have: HashSet<u64> = done.iter().map(|r| r.point).collect();
    let todo: Vec<&Point> = mine.iter().filter(|p| !have.contains(&p.index)).collect();
    let total = mine.len() as u64;
    let skipped = total - todo.len() as u64;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&jsonl)
        .map_err(|e| Error::io(&jsonl, e))?;
    progress(skipped, total);
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<Result<Record>>();
    let jobs = opts.jobs.max(1).min(todo.len().max(1));
    let mut first_err: Option<Error> = None;
    let mut n_done = skipped;
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let tx = tx.clone();
            let (next, todo) = (&next, &todo);
            scope.spawn(move || loop {
                if crate::interrupt::requested() {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(p) = todo.get(i) else { break };
                let r = spec.run_point(p);
                let failed = r.is_err();
                if tx.send(r).is_err() || failed {
                    next.store(usize::MAX / 2, Ordering::Relaxed);
                    break;
                }
            });
        }
        drop(tx);
        for r in rx {
            match r {
                Ok(rec) => {
                    let line = serde_json::to_string(&rec).expect("record serialises");
                    if let Err(e) = writeln!(file, "{line}").and_then(|_| file.flush()) {
                        first_err.get_or_insert(Error::io(&jsonl, e));
                        next.store(usize::MAX / 2, Ordering::Relaxed);
                        continue;
                    }
                    n_done += 1;
                    progress(n_done, total);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
    });
    if first_err.is_none() && crate::interrupt::requested() {
        first_err = Some(Error::Interrupted(format!("{n_done} of {total} points done")));
    }
    if let Some(e) = first_err {
        if let Error::Interrupted(m) = e {
            return Err(Error::Interrupted(format!(
                "{m}; finished points are kept in {} (continue with --resume)",
                jsonl.display()
            )));
        }
        return Err(e.context(format!(
            "sweep stopped; finished points are kept in {} (rerun with --resume)",
            jsonl.display()
        )));
    }
    let table = finish(dir, spec, &mine)?;
    Ok(SweepReport {
        total,
        skipped,
        ran: total - skipped,
        table,
    })
}

/// Write `dir/sweep.parquet` from the records in `dir`, which must cover `expected`.
fn finish(dir: &Path, spec: &SweepSpec, expected: &[Point]) -> Result<PathBuf> {
    let mut recs = read_records(dir)?;
    recs.sort_by_key(|r| r.point);
    recs.dedup_by_key(|r| r.point);
    let want: HashSet<u64> = expected.iter().map(|p| p.index).collect();
    recs.retain(|r| want.contains(&r.point));
    if recs.len() != want.len() {
        return Err(Error::other(format!(
            "{}: {} of {} points finished",
            dir.display(),
            recs.len(),
            want.len()
        )));
    }
    let out = dir.join("sweep.parquet");
    table::write(&out, &spec.param_paths(), &recs)?;
    Ok(out)
}

/// Join shard folders into `out` (the table an unsharded run writes).
pub fn merge(shards: &[PathBuf], out: &Path) -> Result<PathBuf> {
    let mut header: Option<SweepHeader> = None;
    let mut recs: Vec<Record> = Vec::new();
    let mut shard_ids = Vec::new();
    for d in shards {
        let h = read_header(d)?
            .ok_or_else(|| Error::bad(format!("{}: no sweep.json (not a sweep folder)", d.display())))?;
        if let Some(first) = &header {
            if first.fingerprint != h.fingerprint {
                return Err(Error::bad(format!(
                    "{} belongs to another sweep (fingerprint {} against {})",
                    d.display(),
                    h.fingerprint,
                    first.fingerprint
                )));
            }
        }
        shard_ids.push(h.shard);
        let kept = read_records(d)?;
        verify_records(&kept, &h.spec.points()?, &h.spec, &d.join("points.jsonl"))?;
        recs.extend(kept);
        header.get_or_insert(h);
    }
    let header = header.ok_or_else(|| Error::bad("sweep merge: no shard folders given"))?;
    recs.sort_by_key(|r| r.point);
    recs.dedup_by_key(|r| r.point);
    if recs.len() as u64 != header.points {
        let have: HashSet<u64> = recs.iter().map(|r| r.point).collect();
        let missing: Vec<String> = (0..header.points)
            .filter(|i| !have.contains(i))
            .take(10)
            .map(|i| i.to_string())
            .collect();
        return Err(Error::bad(format!(
            "sweep merge: {} of {} points present (shards given: {:?}); missing points {}{}",
            recs.len(),
            header.points,
            shard_ids,
            missing.join(", "),
            if header.points as usize - recs.len() > 10 {
                ", ..."
            } else {
                ""
            }
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let merged = SweepHeader { shard: None, ..header };
    let text = serde_json::to_string_pretty(&merged).map_err(|e| Error::other(e.to_string()))?;
    crate::output::write_atomic(&out.join("sweep.json"), text.as_bytes())?;
    let mut lines = String::new();
    for r in &recs {
        lines += &serde_json::to_string(r).expect("record serialises");
        lines.push('\n');
    }
    crate::output::write_atomic(&out.join("points.jsonl"), lines.as_bytes())?;
    let path = out.join("sweep.parquet");
    table::write(&path, &merged.spec.param_paths(), &recs)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_values_split_at_top_level_commas_only() {
        let g = parse_grid("policy.routing.fractions={a: 0.3, b: 0.7},{a: 1, b: 0}").unwrap();
        assert_eq!(g.values, vec!["{a: 0.3, b: 0.7}", "{a: 1, b: 0}"]);
        let g = parse_grid("x=1, 2 ,'a,b'").unwrap();
        assert_eq!(g.values, vec!["1", "2", "'a,b'"]);
        assert!(parse_grid("x=1,,2").is_err());
        assert!(parse_grid("novalue").is_err());
    }

    #[test]
    fn points_are_the_cross_product_times_seeds_in_a_fixed_order() {
        let spec = SweepSpec {
            scenario: None,
            sets: vec![],
            seeds: 2,
            series: vec![Series {
                label: "a".into(),
                sets: vec![],
                grid: vec![
                    GridAxis {
                        path: "x".into(),
                        values: vec!["1".into(), "2".into()],
                    },
                    GridAxis {
                        path: "y".into(),
                        values: vec!["p".into(), "q".into(), "r".into()],
                    },
                ],
            }],
        };
        let pts = spec.points().unwrap();
        assert_eq!(pts.len(), 12);
        assert_eq!(pts[0].values, vec!["1", "p"]);
        assert_eq!(
            (pts[1].values.clone(), pts[1].seed),
            (vec!["1".to_string(), "p".to_string()], pts[0].seed + 1)
        );
        assert_eq!(pts[2].values, vec!["1", "q"]);
        assert_eq!(pts[11].values, vec!["2", "r"]);
        assert!(pts.iter().enumerate().all(|(i, p)| p.index == i as u64));
        let s = Shard::parse("1/3").unwrap();
        let owned: Vec<u64> = pts.iter().filter(|p| s.owns(p)).map(|p| p.index).collect();
        assert_eq!(owned, vec![1, 4, 7, 10]);
        assert!(Shard::parse("3/3").is_err() && Shard::parse("1-3").is_err());
    }

    #[test]
    fn summaries_flatten_with_list_entries_keyed_by_name() {
        let v: Value = serde_json::json!({"a": {"b": 1.5}, "by_model": [{"model": "M", "share": 0.5}], "s": "x",
            "engines": [{"name": "e-r0", "model": "M", "steps": 3}, {"name": "e-r1", "model": "M", "steps": 4}]});
        let mut out = Vec::new();
        flatten("", &v, &mut out);
        let keys: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
        // Two engines serving one model keep a column each (issue 15: they collided under
        // the model's name), with the model as a column of its own.
        assert_eq!(
            keys,
            vec![
                "a.b",
                "by_model.M.share",
                "s",
                "engines.e-r0.model",
                "engines.e-r0.steps",
                "engines.e-r1.model",
                "engines.e-r1.steps"
            ]
        );
    }
}
