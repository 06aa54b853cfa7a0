//! Bulk writes for a rebuild: rows encoded in PostgreSQL's binary `COPY` format (cheaper for
//! both sides than text: no formatting, escaping or parsing) and sent in chunks of a few
//! megabytes, each its own `COPY` statement: a table's rows are never one buffer that grows,
//! and copies, by doubling, to hundreds of megabytes. Rows that an earlier chunk of the
//! rebuild wrote and this one changed are deleted first, then copied in again whole.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// Rows per `COPY` statement (and so per transaction).
const CHUNK_ROWS: usize = 20_000;

/// The binary format's header: signature, flags, header extension length.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The binary format's trailer: a tuple of -1 fields.
const TRAILER: &[u8] = &(-1i16).to_be_bytes();

/// PostgreSQL counts dates and timestamps from 2000-01-01.
fn postgres_epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(2000, 1, 1).expect("a valid date")
}

/// One value of a row, as the binary `COPY` format carries it: its length, then its bytes.
pub trait CopyValue {
    fn encode(&self, out: &mut Vec<u8>);
}

/// Appends one field: its length and its bytes.
fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    let length = i32::try_from(bytes.len()).expect("a field shorter than 2 GiB");
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(bytes);
}

impl CopyValue for Uuid {
    fn encode(&self, out: &mut Vec<u8>) {
        field(out, self.as_bytes());
    }
}

impl CopyValue for i64 {
    fn encode(&self, out: &mut Vec<u8>) {
        field(out, &self.to_be_bytes());
    }
}

impl CopyValue for NaiveDate {
    fn encode(&self, out: &mut Vec<u8>) {
        let days = (*self - postgres_epoch()).num_days();
        let days = i32::try_from(days).expect("a date PostgreSQL can hold");
        field(out, &days.to_be_bytes());
    }
}

impl CopyValue for DateTime<Utc> {
    /// Microseconds, truncated as sqlx binds timestamps, so that a rebuilt row equals the row
    /// the live projector wrote.
    fn encode(&self, out: &mut Vec<u8>) {
        let epoch = postgres_epoch().and_time(chrono::NaiveTime::MIN).and_utc();
        let micros = (*self - epoch)
            .num_microseconds()
            .expect("a timestamp PostgreSQL can hold");
        field(out, &micros.to_be_bytes());
    }
}

impl CopyValue for str {
    fn encode(&self, out: &mut Vec<u8>) {
        field(out, self.as_bytes());
    }
}

impl CopyValue for &str {
    fn encode(&self, out: &mut Vec<u8>) {
        (**self).encode(out);
    }
}

impl CopyValue for String {
    fn encode(&self, out: &mut Vec<u8>) {
        self.as_str().encode(out);
    }
}

impl<T: CopyValue> CopyValue for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Some(value) => value.encode(out),
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
}

/// The rows of one table, encoded as they are added.
#[derive(Debug)]
pub struct CopyRows {
    table: &'static str,
    columns: Cow<'static, str>,
    /// Each chunk holds up to [`CHUNK_ROWS`] encoded rows, after the header.
    chunks: Vec<Vec<u8>>,
    in_last: usize,
    rows: u64,
    /// Deletes the rows these replace: a statement taking the keys as `$1`, and the keys.
    replaces: Option<(String, Vec<Uuid>)>,
}

impl CopyRows {
    /// `columns` lists the table's columns in the order each row gives its values.
    pub fn new(table: &'static str, columns: impl Into<Cow<'static, str>>) -> Self {
        Self {
            table,
            columns: columns.into(),
            chunks: vec![],
            in_last: CHUNK_ROWS,
            rows: 0,
            replaces: None,
        }
    }

    /// Makes the rows replace those of the table whose `key` column (uuid) is one of `keys`,
    /// within the rows `condition` (SQL, built by HAP; `true` for all) selects: those are
    /// deleted before the copy.
    pub fn replacing(mut self, key: &str, condition: &str, keys: Vec<Uuid>) -> Self {
        if !keys.is_empty() {
            let delete = format!(
                "delete from {} where {key} = any($1) and {condition}",
                self.table
            );
            self.replaces = Some((delete, keys));
        }
        self
    }

    /// The table the rows go to.
    pub fn table(&self) -> &'static str {
        self.table
    }

    /// Adds a row: one value per column.
    pub fn row(&mut self, values: &[&dyn CopyValue]) {
        if self.in_last == CHUNK_ROWS {
            self.chunks.push(HEADER.to_vec());
            self.in_last = 0;
        }
        let out = self.chunks.last_mut().expect("a chunk was just added");
        let fields = i16::try_from(values.len()).expect("fewer than 32768 columns");
        out.extend_from_slice(&fields.to_be_bytes());
        for value in values {
            value.encode(out);
        }
        self.in_last += 1;
        self.rows += 1;
    }

    /// Writes every row into the table (found through the connection's search path), after
    /// deleting those they replace.
    pub async fn write(self, connection: &mut PgConnection) -> Result<u64, sqlx::Error> {
        if let Some((delete, keys)) = &self.replaces {
            sqlx::query(sqlx::AssertSqlSafe(delete.as_str()))
                .bind(keys)
                .execute(&mut *connection)
                .await?;
        }
        let statement = format!(
            "copy {} ({}) from stdin with (format binary)",
            self.table, self.columns
        );
        for mut chunk in self.chunks {
            chunk.extend_from_slice(TRAILER);
            let mut copy = connection.copy_in_raw(&statement).await?;
            copy.send(chunk).await?;
            copy.finish().await?;
        }
        Ok(self.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_length_prefixed_and_null_is_minus_one() {
        let mut out = Vec::new();
        "ab".encode(&mut out);
        None::<String>.encode(&mut out);
        7i64.encode(&mut out);
        assert_eq!(
            out,
            [
                &[0, 0, 0, 2, b'a', b'b'][..],
                &[0xff, 0xff, 0xff, 0xff],
                &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 7],
            ]
            .concat()
        );
    }

    #[test]
    fn dates_and_timestamps_count_from_2000_in_microseconds() {
        let mut out = Vec::new();
        NaiveDate::from_ymd_opt(1999, 12, 31)
            .unwrap()
            .encode(&mut out);
        let at: DateTime<Utc> = "2000-01-01T00:00:01.000002999Z".parse().unwrap();
        at.encode(&mut out);
        assert_eq!(
            out,
            [
                &[0, 0, 0, 4][..],
                &(-1i32).to_be_bytes(),
                &[0, 0, 0, 8],
                &1_000_002i64.to_be_bytes(),
            ]
            .concat()
        );
    }

    #[test]
    fn rows_split_into_chunks_that_each_start_with_the_header() {
        let mut rows = CopyRows::new("t", "n");
        for n in 0..(CHUNK_ROWS as i64 + 1) {
            rows.row(&[&n]);
        }
        assert_eq!(rows.chunks.len(), 2);
        assert_eq!(rows.rows, CHUNK_ROWS as u64 + 1);
        let last = CHUNK_ROWS as i64;
        assert_eq!(
            rows.chunks[1],
            [HEADER, &[0, 1, 0, 0, 0, 8], &last.to_be_bytes()].concat()
        );
    }
}
