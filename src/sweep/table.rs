//! `sweep.parquet`: one row per run. Columns: `point`, `label`, `seed`, `param.<path>` (the
//! override text of each grid path, null where a series has no such axis), then every summary
//! metric under its flattened name (`workflows.e2e_s.p99`, `accuracy.accuracy`,
//! `by_model.Qwen2.5-7B.share`, ...): Float64 where every value is a number, else Utf8.

use super::Record;
use crate::error::{Error, Result};
use arrow::array::{Array, ArrayRef, AsArray, Float64Array, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, UInt64Type};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Column names of the table itself; a summary metric of the same name is left out.
const RESERVED: [&str; 3] = ["point", "label", "seed"];

/// Write `recs` (in point order) to `path`.
pub fn write(path: &Path, param_paths: &[String], recs: &[Record]) -> Result<()> {
    let mut fields = vec![
        Field::new("point", DataType::UInt64, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("seed", DataType::UInt64, false),
    ];
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(recs.iter().map(|r| r.point))),
        Arc::new(StringArray::from_iter_values(recs.iter().map(|r| r.label.as_str()))),
        Arc::new(UInt64Array::from_iter_values(recs.iter().map(|r| r.seed))),
    ];
    for p in param_paths {
        fields.push(Field::new(format!("param.{p}"), DataType::Utf8, true));
        cols.push(Arc::new(StringArray::from(
            recs.iter().map(|r| r.params.get(p).cloned()).collect::<Vec<_>>(),
        )));
    }
    let mut keys: Vec<String> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let maps: Vec<HashMap<&str, &Value>> = recs
        .iter()
        .map(|r| {
            for (k, _) in &r.metrics {
                // The summary repeats the seed; the table's own columns come first.
                if RESERVED.contains(&k.as_str()) || k.starts_with("param.") {
                    continue;
                }
                if !index.contains_key(k) {
                    index.insert(k.clone(), keys.len());
                    keys.push(k.clone());
                }
            }
            r.metrics.iter().map(|(k, v)| (k.as_str(), v)).collect()
        })
        .collect();
    for k in &keys {
        let vals: Vec<Option<&Value>> = maps.iter().map(|m| m.get(k.as_str()).copied()).collect();
        if vals.iter().flatten().all(|v| v.is_number()) {
            fields.push(Field::new(k, DataType::Float64, true));
            cols.push(Arc::new(Float64Array::from(
                vals.iter().map(|v| v.and_then(|v| v.as_f64())).collect::<Vec<_>>(),
            )));
        } else {
            fields.push(Field::new(k, DataType::Utf8, true));
            cols.push(Arc::new(StringArray::from(
                vals.iter()
                    .map(|v| v.map(|v| v.as_str().map(String::from).unwrap_or_else(|| v.to_string())))
                    .collect::<Vec<_>>(),
            )));
        }
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), cols)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = std::path::PathBuf::from(tmp);
    let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let mut w = ArrowWriter::try_new(file, schema, Some(props))?;
    w.write(&batch)?;
    w.close()?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// A sweep table read back (all columns, in file order).
#[derive(Debug, Clone, Default)]
pub struct SweepTable {
    pub rows: usize,
    num: Vec<(String, Vec<Option<f64>>)>,
    text: Vec<(String, Vec<Option<String>>)>,
}

impl SweepTable {
    pub fn read(path: &Path) -> Result<SweepTable> {
        let reader = crate::input::open_parquet(path)?.build()?;
        let mut t = SweepTable::default();
        for batch in reader {
            let batch = batch?;
            for (i, field) in batch.schema().fields().iter().enumerate() {
                let col = batch.column(i);
                let name = field.name().clone();
                match field.data_type() {
                    DataType::Float64 | DataType::UInt64 => {
                        let vals: Vec<Option<f64>> = (0..col.len())
                            .map(|j| {
                                (!col.is_null(j)).then(|| match col.as_primitive_opt::<Float64Type>() {
                                    Some(a) => a.value(j),
                                    None => col.as_primitive::<UInt64Type>().value(j) as f64,
                                })
                            })
                            .collect();
                        match t.num.iter_mut().find(|(n, _)| *n == name) {
                            Some((_, v)) => v.extend(vals),
                            None => t.num.push((name, vals)),
                        }
                    }
                    DataType::Utf8 => {
                        let a = col.as_string::<i32>();
                        let vals: Vec<Option<String>> = (0..a.len())
                            .map(|j| (!a.is_null(j)).then(|| a.value(j).to_string()))
                            .collect();
                        match t.text.iter_mut().find(|(n, _)| *n == name) {
                            Some((_, v)) => v.extend(vals),
                            None => t.text.push((name, vals)),
                        }
                    }
                    other => {
                        return Err(Error::bad(format!(
                            "{}: column `{name}` has type {other}, not a sweep table",
                            path.display()
                        )))
                    }
                }
            }
            t.rows += batch.num_rows();
        }
        if t.text("label").is_none() {
            return Err(Error::bad(format!(
                "{}: no `label` column (not a sweep table)",
                path.display()
            )));
        }
        Ok(t)
    }

    pub fn num(&self, name: &str) -> Option<&[Option<f64>]> {
        self.num.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }
    pub fn text(&self, name: &str) -> Option<&[Option<String>]> {
        self.text.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }
    /// A numeric column or an error naming the file's numeric columns.
    pub fn need_num(&self, name: &str) -> Result<&[Option<f64>]> {
        self.num(name).ok_or_else(|| {
            let names: Vec<&str> = self.num.iter().map(|(n, _)| n.as_str()).collect();
            Error::bad(format!(
                "no numeric column `{name}` in the sweep table (columns: {})",
                names.join(", ")
            ))
        })
    }
    /// Distinct seeds in the table (the number each mean is taken over).
    pub fn seeds(&self) -> usize {
        let mut v: Vec<u64> = self
            .num("seed")
            .map(|c| c.iter().flatten().map(|x| *x as u64).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v.dedup();
        v.len().max(1)
    }

    /// The grid paths of the table (`param.<path>` columns), in order.
    pub fn params(&self) -> Vec<String> {
        self.text
            .iter()
            .filter_map(|(n, _)| n.strip_prefix("param.").map(String::from))
            .collect()
    }
}
