//! Group commit: appends that arrive while earlier ones are being written share the next
//! transaction. One commit (one flush of the write-ahead log, one round trip) then serves many
//! commands, which is what lets the command API outrun one-insert-per-transaction writers.
//!
//! A few workers each take whatever appends are waiting (up to a batch) and write them in one
//! statement. If that statement fails (a version conflict, a taken claim, a reused key — any
//! one append's refusal fails them all), each append of the batch is written again alone, so
//! every caller gets exactly the answer it would have got without batching. Under light load
//! an append waits for nothing: an idle worker takes it at once, alone.

use std::sync::Arc;

use futures::future::join_all;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::EventStore;
use crate::append::{Append, AppendError, Appended};

type Reply = oneshot::Sender<Result<Appended, AppendError>>;

/// The queue of appends waiting for a worker.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    queue: mpsc::Sender<(Append, Reply)>,
}

impl GroupCommit {
    /// Starts `workers` writers over `store`, each writing up to `batch` appends at a time.
    pub(crate) fn start(store: EventStore, workers: usize, batch: usize) -> Self {
        let (queue, waiting) = mpsc::channel::<(Append, Reply)>(workers * batch * 4);
        let waiting = Arc::new(Mutex::new(waiting));
        for _ in 0..workers {
            tokio::spawn(work(store.clone(), waiting.clone(), batch));
        }
        Self { queue }
    }

    pub(crate) async fn submit(&self, append: Append) -> Result<Appended, AppendError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((append, reply))
            .await
            .expect("the workers run as long as the runtime");
        answer
            .await
            .expect("a worker answers every append it takes")
    }
}

/// One writer: takes the appends waiting (the first one blocking, the rest as they are) and
/// writes them together. Ends when every sender is gone.
async fn work(
    store: EventStore,
    waiting: Arc<Mutex<mpsc::Receiver<(Append, Reply)>>>,
    batch: usize,
) {
    loop {
        let mut taken = Vec::with_capacity(batch);
        {
            let mut waiting = waiting.lock().await;
            match waiting.recv().await {
                Some(first) => taken.push(first),
                None => return,
            }
            while taken.len() < batch {
                match waiting.try_recv() {
                    Ok(next) => taken.push(next),
                    Err(_) => break,
                }
            }
        }
        if taken.len() == 1 {
            let (append, reply) = taken.remove(0);
            let _ = reply.send(store.append_alone(append).await);
            continue;
        }
        metrics::histogram!("hap_append_batch_size").record(taken.len() as f64);
        let appends: Vec<Append> = taken.iter().map(|(a, _)| a.clone()).collect();
        match store.write(&appends).await {
            Ok(appended) => {
                for ((_, reply), outcome) in taken.into_iter().zip(appended) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(error) => {
                tracing::debug!(%error, size = taken.len(), "batch refused; writing each alone");
                let alone = taken.into_iter().map(|(append, reply)| {
                    let store = store.clone();
                    async move {
                        let _ = reply.send(store.append_alone(append).await);
                    }
                });
                join_all(alone).await;
            }
        }
    }
}
