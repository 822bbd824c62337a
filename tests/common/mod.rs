//! Helpers shared by the integration tests: run a scenario into a fresh folder, read columns
//! of the result files back.
#![allow(dead_code)]

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int64Type, UInt32Type, UInt64Type};
use chimera::scenario::{self, Resolved, DEFAULT_SCENARIO};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/data`. Missing, it fails the test, unless CHIMERA_SKIP_SHARED_DATA=1 says to
/// skip the tests that read it (CI never sets it): no test passes by skipping.
pub fn shared_data() -> Option<PathBuf> {
    let p = repo().join("../shared/data");
    if p.exists() {
        return Some(p);
    }
    if std::env::var("CHIMERA_SKIP_SHARED_DATA").as_deref() == Ok("1") {
        eprintln!("skipped: ../shared/data absent and CHIMERA_SKIP_SHARED_DATA=1");
        return None;
    }
    panic!(
        "{} is missing: the tests read the shared data sets there; set CHIMERA_SKIP_SHARED_DATA=1 to skip those tests",
        p.display()
    )
}

/// A fresh, empty temporary folder unique to this test.
pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("chimera-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn default_with(sets: &[&str]) -> Resolved {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    scenario::load_str(DEFAULT_SCENARIO, &sets, Path::new(".")).unwrap()
}

pub fn run(r: &Resolved, dir: &Path) -> chimera::sim::RunReport {
    chimera::run::run_to_dir(r, dir, &[], None, &mut |_, _| {}).unwrap()
}

/// All values of one column, converted to f64 (nulls as NaN).
pub fn column(file: &Path, name: &str) -> Vec<f64> {
    let f = std::fs::File::open(file).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let col = batch
            .column_by_name(name)
            .unwrap_or_else(|| panic!("{}: no column {name}", file.display()));
        for i in 0..col.len() {
            let v = if col.is_null(i) {
                f64::NAN
            } else if let Some(a) = col.as_primitive_opt::<Int64Type>() {
                a.value(i) as f64
            } else if let Some(a) = col.as_primitive_opt::<UInt64Type>() {
                a.value(i) as f64
            } else if let Some(a) = col.as_primitive_opt::<UInt32Type>() {
                a.value(i) as f64
            } else if let Some(a) = col.as_primitive_opt::<Float64Type>() {
                a.value(i)
            } else if let Some(a) = col.as_boolean_opt() {
                a.value(i) as u8 as f64
            } else {
                panic!("column {name}: unsupported type {:?}", col.data_type())
            };
            out.push(v);
        }
    }
    out
}

/// All values of a string column.
pub fn strings(file: &Path, name: &str) -> Vec<String> {
    let f = std::fs::File::open(file).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let col = batch.column_by_name(name).unwrap();
        let a = col.as_string::<i32>();
        out.extend((0..a.len()).map(|i| a.value(i).to_string()));
    }
    out
}

pub fn json(file: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
}

/// A child process killed when dropped (servers started by tests).
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `chimera emulate` on a free port of 127.0.0.1; returns the process and `host:port`.
pub fn emulator(model: &str, gpu: &str, sets: &[&str]) -> (Child, String) {
    use std::io::BufRead;
    let mut args: Vec<String> = ["emulate", "--model", model, "--gpu", gpu, "--port", "0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for s in sets {
        args.push("--set".into());
        args.push(s.to_string());
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chimera"))
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.rsplit("http://").next().unwrap().trim().to_string();
    assert!(addr.starts_with("127.0.0.1:"), "emulator said: {line}");
    (Child(child), addr)
}

/// Column names of a Parquet file.
pub fn schema_names(file: &Path) -> Vec<String> {
    let f = std::fs::File::open(file).unwrap();
    let b = ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
    b.schema().fields().iter().map(|f| f.name().clone()).collect()
}

/// Run the chimera binary; its stdout, or a panic with both outputs when it fails.
pub fn chimera_ok(args: &[&str]) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_chimera"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "chimera {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The machine's timing noise now, as a relative error: a fixed piece of CPU work is timed
/// 40 times and the spread (p90 / p10 - 1) is returned. On a quiet machine it is a few per
/// cent; when other work shares the cores it grows, and so may any real-time measurement.
/// Timing tests add it (times a factor they state) to their tolerances, measured before and
/// after what they time, so that a busy machine widens the bar instead of failing the test,
/// and print it.
#[allow(dead_code)]
pub fn timing_noise() -> f64 {
    let mut v: Vec<f64> = (0..40)
        .map(|_| {
            let t = std::time::Instant::now();
            let mut x = 0u64;
            for i in 0..400_000u64 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
            }
            std::hint::black_box(x);
            // Sleep a little between samples, as a server's step loop does.
            let d = t.elapsed().as_secs_f64();
            std::thread::sleep(std::time::Duration::from_micros(500));
            d
        })
        .collect();
    v.sort_by(f64::total_cmp);
    (v[35] / v[4] - 1.0).max(0.0)
}
