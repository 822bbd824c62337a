//! A Parquet table written in batches as rows arrive (arrow-rs `ArrowWriter`, Snappy).
//!
//! Columns are declared once; rows are pushed as slices of [`Val`]; every `BATCH_ROWS` rows a
//! record batch goes to the writer, and row groups are capped so the writer's buffer stays
//! small. `finish` writes the footer; a table that is dropped unfinished is finished on drop,
//! so the rows written so far stay readable when a run stops on an error.

use crate::error::{Error, Result};
use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const BATCH_ROWS: usize = 16_384;
const ROW_GROUP_ROWS: usize = 65_536;

#[derive(Debug, Clone)]
pub enum ColType {
    I64,
    /// Nullable integer (a value a run could not observe).
    OptI64,
    U32,
    U64,
    /// Nullable float.
    F64,
    /// Nullable boolean.
    Bool,
    /// A string from a fixed set given up front (engine names, statuses); values are indices.
    Str(Vec<String>),
}

#[derive(Debug, Clone, Copy)]
pub enum Val {
    I64(i64),
    OptI64(Option<i64>),
    U32(u32),
    U64(u64),
    F64(Option<f64>),
    Bool(Option<bool>),
    Str(u32),
}

enum Buf {
    I64(Vec<i64>),
    OptI64(Vec<Option<i64>>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    F64(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    Str(Vec<u32>, Vec<String>),
}

pub struct Table {
    path: PathBuf,
    schema: SchemaRef,
    cols: Vec<Buf>,
    rows: usize,
    total_rows: u64,
    writer: Option<ArrowWriter<File>>,
}

impl Table {
    pub fn create(path: &Path, columns: &[(&str, ColType)]) -> Result<Table> {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(name, t)| match t {
                ColType::I64 => Field::new(*name, DataType::Int64, false),
                ColType::OptI64 => Field::new(*name, DataType::Int64, true),
                ColType::U32 => Field::new(*name, DataType::UInt32, false),
                ColType::U64 => Field::new(*name, DataType::UInt64, false),
                ColType::F64 => Field::new(*name, DataType::Float64, true),
                ColType::Bool => Field::new(*name, DataType::Boolean, true),
                ColType::Str(_) => Field::new(*name, DataType::Utf8, false),
            })
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        // Dictionary encoding only for the string columns: numeric columns (timestamps) are
        // nearly unique, where a dictionary costs memory and time and saves nothing.
        let mut props = WriterProperties::builder().set_dictionary_enabled(false);
        for (name, t) in columns {
            if matches!(t, ColType::Str(_)) {
                props = props.set_column_dictionary_enabled(parquet::schema::types::ColumnPath::from(*name), true);
            }
        }
        let props = props
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_created_by(format!("chimera {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| Error::other(format!("{}: {e}", path.display())))?;
        let cols = columns
            .iter()
            .map(|(_, t)| match t {
                ColType::I64 => Buf::I64(Vec::with_capacity(BATCH_ROWS)),
                ColType::OptI64 => Buf::OptI64(Vec::with_capacity(BATCH_ROWS)),
                ColType::U32 => Buf::U32(Vec::with_capacity(BATCH_ROWS)),
                ColType::U64 => Buf::U64(Vec::with_capacity(BATCH_ROWS)),
                ColType::F64 => Buf::F64(Vec::with_capacity(BATCH_ROWS)),
                ColType::Bool => Buf::Bool(Vec::with_capacity(BATCH_ROWS)),
                ColType::Str(d) => Buf::Str(Vec::with_capacity(BATCH_ROWS), d.clone()),
            })
            .collect();
        Ok(Table {
            path: path.to_path_buf(),
            schema,
            cols,
            rows: 0,
            total_rows: 0,
            writer: Some(writer),
        })
    }

    /// Append one row given as (column name, value) pairs: each name must be the declared
    /// column's at that position (a row built for another schema is refused, not written).
    pub fn push_named(&mut self, row: &[(&str, Val)]) -> Result<()> {
        if row.len() != self.cols.len() {
            return Err(Error::other(format!(
                "{}: a row of {} values for {} columns",
                self.path.display(),
                row.len(),
                self.cols.len()
            )));
        }
        for (i, ((name, v), c)) in row.iter().zip(&self.cols).enumerate() {
            // Names are checked on the first row (rows of one table come from one builder);
            // types on every row.
            let want = self.schema.field(i).name();
            let name_ok = self.total_rows > 0 || want == name;
            let fits = matches!(
                (c, v),
                (Buf::I64(_), Val::I64(_))
                    | (Buf::OptI64(_), Val::OptI64(_))
                    | (Buf::U32(_), Val::U32(_))
                    | (Buf::U64(_), Val::U64(_))
                    | (Buf::F64(_), Val::F64(_))
                    | (Buf::Bool(_), Val::Bool(_))
                    | (Buf::Str(..), Val::Str(_))
            );
            if !name_ok || !fits {
                return Err(Error::other(format!(
                    "{}: column {i} is `{want}` ({:?}), the row gives `{name}` ({v:?})",
                    self.path.display(),
                    self.schema.field(i).data_type()
                )));
            }
        }
        self.push_vals(row.iter().map(|(_, v)| v))
    }

    /// Append one row; `row` must match the declared columns in order and type.
    pub fn push(&mut self, row: &[Val]) -> Result<()> {
        debug_assert_eq!(row.len(), self.cols.len());
        self.push_vals(row.iter())
    }

    fn push_vals<'v>(&mut self, row: impl Iterator<Item = &'v Val>) -> Result<()> {
        for (c, v) in self.cols.iter_mut().zip(row) {
            match (c, *v) {
                (Buf::I64(b), Val::I64(x)) => b.push(x),
                (Buf::OptI64(b), Val::OptI64(x)) => b.push(x),
                (Buf::U32(b), Val::U32(x)) => b.push(x),
                (Buf::U64(b), Val::U64(x)) => b.push(x),
                (Buf::F64(b), Val::F64(x)) => b.push(x),
                (Buf::Bool(b), Val::Bool(x)) => b.push(x),
                (Buf::Str(b, d), Val::Str(x)) => {
                    debug_assert!((x as usize) < d.len());
                    b.push(x)
                }
                _ => panic!("{}: row does not match the table's column types", self.path.display()),
            }
        }
        self.rows += 1;
        self.total_rows += 1;
        if self.rows >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.rows == 0 {
            return Ok(());
        }
        let arrays: Vec<ArrayRef> = self
            .cols
            .iter_mut()
            .map(|c| -> ArrayRef {
                match c {
                    Buf::I64(b) => Arc::new(Int64Array::from(std::mem::take(b))),
                    Buf::OptI64(b) => Arc::new(Int64Array::from(std::mem::take(b))),
                    Buf::U32(b) => Arc::new(UInt32Array::from(std::mem::take(b))),
                    Buf::U64(b) => Arc::new(UInt64Array::from(std::mem::take(b))),
                    Buf::F64(b) => Arc::new(Float64Array::from(std::mem::take(b))),
                    Buf::Bool(b) => Arc::new(BooleanArray::from(std::mem::take(b))),
                    Buf::Str(b, d) => {
                        let a = StringArray::from_iter_values(b.iter().map(|&i| d[i as usize].as_str()));
                        b.clear();
                        Arc::new(a)
                    }
                }
            })
            .collect();
        self.rows = 0;
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)?;
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| Error::other(format!("{}: table already finished", self.path.display())))?;
        w.write(&batch)
            .map_err(|e| Error::other(format!("{}: {e}", self.path.display())))?;
        Ok(())
    }

    /// Flush and write the footer. Returns the number of rows written.
    pub fn finish(&mut self) -> Result<u64> {
        self.flush()?;
        if let Some(w) = self.writer.take() {
            w.close()
                .map_err(|e| Error::other(format!("{}: {e}", self.path.display())))?;
        }
        Ok(self.total_rows)
    }

    pub fn rows(&self) -> u64 {
        self.total_rows
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = self.finish();
        }
    }
}
