//! Reading the whole store in bulk, for rebuilds: every committed event after a checkpoint, in
//! the gap-safe order of [`EventStore::read_all`], through one `COPY … TO STDOUT` in
//! PostgreSQL's binary format instead of pages of queries.
//!
//! One statement streams everything below the fence (no page boundaries to find again, no
//! round trips between pages), only the columns a projector needs travel, and the rows are cut
//! apart by hand rather than decoded row by row by the driver, which is why it reads much
//! faster than paging through `read_all` (docs/benchmarks.md). The statement reads through one
//! snapshot and writes nothing, so it holds no transaction id and holds back no publisher.

use chrono::{DateTime, Utc};
use futures::{Stream, TryStreamExt};
use uuid::Uuid;

use crate::EventStore;
use crate::position::GlobalCheckpoint;

/// The columns of a scanned row, in order. No column may be null.
const COLUMNS: &str = "transaction_id, position, event_id, stream_id, version, event_type, \
                       schema_version, payload, occurred_at, tenant_id";
const FIELDS: i16 = 10;

/// The binary format's signature, before its flags and header extension.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Pages a scan reads ahead of its reader: reading goes on while the pages before are decoded
/// and folded.
const PAGES_AHEAD: usize = 4;
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("the store sent a row that is not as scanned: {0}")]
    Format(&'static str),
}

/// One event as a bulk scan reads it; text borrowed from its page.
#[derive(Debug, Clone, Copy)]
pub struct ScannedEvent<'a> {
    /// Where a reader that has taken this event stands.
    pub checkpoint: GlobalCheckpoint,
    pub event_id: Uuid,
    pub stream_id: Uuid,
    pub version: i64,
    pub event_type: &'a str,
    /// The payload's version for its event type.
    pub schema_version: i32,
    /// JSON text, as stored.
    pub payload: &'a str,
    pub occurred_at: DateTime<Utc>,
    pub tenant_id: &'a str,
}

/// Whole rows of a scan, in store order, still in the binary format: parsing them (and what
/// follows, such as decoding payloads) can happen on another thread than the reading.
#[derive(Debug)]
pub struct ScanPage {
    bytes: Vec<u8>,
    rows: usize,
}

impl ScanPage {
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The page's events, in order.
    pub fn events(&self) -> impl Iterator<Item = Result<ScannedEvent<'_>, ScanError>> {
        let mut rest = self.bytes.as_slice();
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            Some(parse_row(&mut rest))
        })
    }
}

impl EventStore {
    /// Every event committed after `after`, in (transaction id, position) order and below the
    /// same fence as [`Self::read_all`] as of the statement's start, in pages of `rows` rows
    /// (the last one may be shorter). Events committed later are left to a following
    /// [`Self::read_all`] from the last page's checkpoint.
    ///
    /// A task of its own reads a few pages ahead of the caller, on a connection taken
    /// from the pool and closed, not returned, when the scan ends or the stream is dropped: a
    /// `COPY` cannot be cut short, and a connection handed back in the middle of one would
    /// fail its next statement.
    pub async fn scan(
        &self,
        after: GlobalCheckpoint,
        rows: usize,
    ) -> Result<impl Stream<Item = Result<ScanPage, ScanError>> + Send + Unpin + 'static, ScanError>
    {
        // COPY takes no bind parameters: the checkpoint's two integers are formatted in, which
        // no value of an i64 can turn into anything but a number.
        let statement = format!(
            concat!(
                "copy (select {columns} from events \
                  where (transaction_id, position) > ('{transaction}'::xid8, {position}) \
                    and transaction_id < (",
                crate::read::writer_fence!(concat!(
                    "'",
                    crate::read::read_model_application!(),
                    "'"
                )),
                ") order by events.transaction_id, events.position) \
                 to stdout (format binary)"
            ),
            columns = COLUMNS,
            transaction = after.transaction_id,
            position = after.position,
        );
        let mut connection = self.pool.acquire().await?;
        connection.close_on_drop();
        let (pages, arriving) = tokio::sync::mpsc::channel(PAGES_AHEAD);
        tokio::spawn(async move {
            let mut cutter = match connection.copy_out_raw(&statement).await {
                Ok(chunks) => Cutter::new(chunks, rows.max(1)),
                Err(error) => {
                    let _ = pages.send(Err(error.into())).await;
                    return;
                }
            };
            // Ends at the last page, at the first error, or when nobody reads any more.
            while let Some(page) = cutter.next_page().await.transpose() {
                let failed = page.is_err();
                if pages.send(page).await.is_err() || failed {
                    return;
                }
            }
        });
        let mut arriving = arriving;
        Ok(futures::stream::poll_fn(move |cx| arriving.poll_recv(cx)))
    }
}

/// Cuts the stream of `COPY` data into pages of whole rows, wherever the chunks happen to end.
struct Cutter<S> {
    /// The `COPY` data as the driver receives it.
    chunks: S,
    /// Received and not yet handed out.
    buffer: Vec<u8>,
    /// Where the whole rows walked so far in `buffer` end, and how many there are: each row
    /// is walked once, however many chunks it took to arrive.
    walked: usize,
    rows_walked: usize,
    /// Whether the header has been read past.
    started: bool,
    /// Whether the trailer has been seen.
    ended: bool,
    rows: usize,
}

impl<S, B> Cutter<S>
where
    S: Stream<Item = Result<B, sqlx::Error>> + Unpin,
    B: AsRef<[u8]>,
{
    /// Cuts `chunks` into pages of `rows` rows.
    fn new(chunks: S, rows: usize) -> Self {
        Self {
            chunks,
            buffer: Vec::new(),
            walked: 0,
            rows_walked: 0,
            started: false,
            ended: false,
            rows,
        }
    }

    async fn next_page(&mut self) -> Result<Option<ScanPage>, ScanError> {
        loop {
            if !self.started {
                self.started = self.skip_header()?;
            }
            if self.started && !self.ended {
                self.walk()?;
            }
            if self.rows_walked == self.rows || (self.ended && self.rows_walked > 0) {
                // The next page is about as large as this one: room for it up front spares
                // the copies of growing a buffer of megabytes step by step.
                let mut next = Vec::with_capacity(self.walked + self.walked / 4);
                next.extend_from_slice(&self.buffer[self.walked..]);
                self.buffer.truncate(self.walked);
                let bytes = std::mem::replace(&mut self.buffer, next);
                let rows = std::mem::take(&mut self.rows_walked);
                self.walked = 0;
                return Ok(Some(ScanPage { bytes, rows }));
            }
            // The driver's stream must be read to its end, past the trailer, or the
            // connection is left in the middle of the statement.
            match self.chunks.try_next().await? {
                Some(chunk) if !self.ended => self.buffer.extend_from_slice(chunk.as_ref()),
                Some(_) => return Err(ScanError::Format("data after the trailer")),
                None if self.ended => return Ok(None),
                None => return Err(ScanError::Format("the data ended without a trailer")),
            }
        }
    }

    /// Walks on over the whole rows received, up to a page; notes the trailer.
    fn walk(&mut self) -> Result<(), ScanError> {
        while self.rows_walked < self.rows {
            let rest = &self.buffer[self.walked..];
            let Some(count) = rest.get(..2) else { break };
            let count = i16::from_be_bytes([count[0], count[1]]);
            if count == -1 {
                self.ended = true;
                self.buffer.truncate(self.walked);
                break;
            }
            if count != FIELDS {
                return Err(ScanError::Format("a row with another number of columns"));
            }
            let Some(length) = row_length(rest) else {
                break;
            };
            self.walked += length;
            self.rows_walked += 1;
        }
        Ok(())
    }

    /// Drops the header from the buffer once it is all there; whether it was.
    fn skip_header(&mut self) -> Result<bool, ScanError> {
        let fixed = SIGNATURE.len() + 8;
        if self.buffer.len() < fixed {
            return Ok(false);
        }
        if !self.buffer.starts_with(SIGNATURE) {
            return Err(ScanError::Format("no binary COPY signature"));
        }
        let extension = u32::from_be_bytes(
            self.buffer[SIGNATURE.len() + 4..fixed]
                .try_into()
                .expect("four bytes"),
        ) as usize;
        if self.buffer.len() < fixed + extension {
            return Ok(false);
        }
        self.buffer.drain(..fixed + extension);
        Ok(true)
    }
}

/// The length of the row at the start of `bytes` (its column count checked already), if all of
/// it is there.
fn row_length(bytes: &[u8]) -> Option<usize> {
    let mut at = 2;
    for _ in 0..FIELDS {
        let length = i32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?);
        at += 4 + usize::try_from(length).unwrap_or(0);
        if at > bytes.len() {
            return None;
        }
    }
    Some(at)
}

/// Parses the row at the start of `rest` (a whole one: pages hold only those) and moves past it.
fn parse_row<'a>(rest: &mut &'a [u8]) -> Result<ScannedEvent<'a>, ScanError> {
    *rest = rest.get(2..).ok_or(ScanError::Format("a row cut short"))?;
    let transaction_id = u64::from_be_bytes(fixed(rest)?);
    let transaction_id = i64::try_from(transaction_id)
        .map_err(|_| ScanError::Format("a transaction id beyond i64"))?;
    let position = i64::from_be_bytes(fixed(rest)?);
    let event_id = Uuid::from_bytes(fixed(rest)?);
    let stream_id = Uuid::from_bytes(fixed(rest)?);
    let version = i64::from_be_bytes(fixed(rest)?);
    let event_type = text(rest)?;
    let schema_version = i32::from_be_bytes(fixed(rest)?);
    let payload = text(rest)?;
    let micros = i64::from_be_bytes(fixed(rest)?);
    let occurred_at = micros
        .checked_add(POSTGRES_EPOCH_MICROS)
        .and_then(DateTime::from_timestamp_micros)
        .ok_or(ScanError::Format("a timestamp out of range"))?;
    let tenant_id = text(rest)?;
    Ok(ScannedEvent {
        checkpoint: GlobalCheckpoint {
            transaction_id,
            position,
        },
        event_id,
        stream_id,
        version,
        event_type,
        schema_version,
        payload,
        occurred_at,
        tenant_id,
    })
}

/// The next field's bytes, moving past it; an error for a null or a field cut short.
fn field<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], ScanError> {
    let length = rest
        .get(..4)
        .map(|b| i32::from_be_bytes(b.try_into().expect("four bytes")))
        .ok_or(ScanError::Format("a row cut short"))?;
    let length = usize::try_from(length).map_err(|_| ScanError::Format("a null column"))?;
    let bytes = rest
        .get(4..4 + length)
        .ok_or(ScanError::Format("a row cut short"))?;
    *rest = &rest[4 + length..];
    Ok(bytes)
}

fn fixed<const N: usize>(rest: &mut &[u8]) -> Result<[u8; N], ScanError> {
    field(rest)?
        .try_into()
        .map_err(|_| ScanError::Format("a column of the wrong width"))
}

fn text<'a>(rest: &mut &'a [u8]) -> Result<&'a str, ScanError> {
    std::str::from_utf8(field(rest)?).map_err(|_| ScanError::Format("text that is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row in the binary format, as PostgreSQL sends it.
    fn row(position: i64, event_type: &str, payload: &str) -> Vec<u8> {
        let mut out = FIELDS.to_be_bytes().to_vec();
        let mut push = |bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
            out.extend_from_slice(bytes);
        };
        push(&7u64.to_be_bytes());
        push(&position.to_be_bytes());
        push(Uuid::from_u128(1).as_bytes());
        push(Uuid::from_u128(2).as_bytes());
        push(&3i64.to_be_bytes());
        push(event_type.as_bytes());
        push(&1i32.to_be_bytes());
        push(payload.as_bytes());
        push(&0i64.to_be_bytes());
        push(b"default");
        out
    }

    /// A cutter over `data` arriving in chunks of `size` bytes.
    fn cutter(
        data: &[u8],
        size: usize,
        rows: usize,
    ) -> Cutter<impl Stream<Item = Result<Vec<u8>, sqlx::Error>> + Unpin> {
        let chunks: Vec<Result<Vec<u8>, sqlx::Error>> =
            data.chunks(size).map(|c| Ok(c.to_vec())).collect();
        Cutter::new(futures::stream::iter(chunks), rows)
    }

    #[tokio::test]
    async fn rows_are_cut_into_pages_whole_wherever_chunks_end() {
        let mut data = SIGNATURE.to_vec();
        data.extend_from_slice(&0u32.to_be_bytes()); // flags
        data.extend_from_slice(&0u32.to_be_bytes()); // no header extension
        data.extend(row(1, "PatientRegistered", r#"{"a":1}"#));
        data.extend(row(2, "PatientUpdated", "{}"));
        data.extend(row(3, "X", "[]"));
        data.extend_from_slice(&(-1i16).to_be_bytes());

        for size in [1, 7, 64, data.len()] {
            let mut cutter = cutter(&data, size, 2);
            let first = cutter.next_page().await.unwrap().expect("a first page");
            let second = cutter.next_page().await.unwrap().expect("a second page");
            assert!(cutter.next_page().await.unwrap().is_none());
            assert_eq!((first.len(), second.len()), (2, 1), "chunks of {size}");

            let events: Vec<ScannedEvent<'_>> = first.events().collect::<Result<_, _>>().unwrap();
            assert_eq!(events[1].checkpoint.transaction_id, 7);
            assert_eq!(events[1].checkpoint.position, 2);
            assert_eq!(events[0].event_type, "PatientRegistered");
            assert_eq!(events[0].payload, r#"{"a":1}"#);
            assert_eq!(events[0].stream_id, Uuid::from_u128(2));
            assert_eq!(
                events[0].occurred_at.to_rfc3339(),
                "2000-01-01T00:00:00+00:00"
            );
            let last = second.events().next().unwrap().unwrap();
            assert_eq!((last.checkpoint.position, last.payload), (3, "[]"));
        }
    }

    #[tokio::test]
    async fn data_cut_off_before_the_trailer_is_an_error() {
        let mut data = SIGNATURE.to_vec();
        data.extend_from_slice(&[0; 8]);
        data.extend(row(1, "PatientRegistered", "{}"));
        let mut cutter = cutter(&data[..data.len() - 3], 5, 10);
        assert!(matches!(
            cutter.next_page().await,
            Err(ScanError::Format("the data ended without a trailer"))
        ));
    }

    #[test]
    fn a_row_with_a_null_is_refused() {
        let mut bytes = FIELDS.to_be_bytes().to_vec();
        bytes.extend_from_slice(&(-1i32).to_be_bytes());
        let mut rest = bytes.as_slice();
        assert!(matches!(
            parse_row(&mut rest),
            Err(ScanError::Format("a null column"))
        ));
    }
}
