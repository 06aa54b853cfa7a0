//! The vault: each data subject's key, and the sealing and opening of payloads with it.
//!
//! A subject's key is 32 random bytes, created the first time something of theirs is sealed,
//! and kept in `subject_keys` wrapped under the master key ([`MasterKey::wrap_key`]). Erasing
//! the subject deletes that row, in the statement that appends the erasure
//! (`eventstore::Erasure`): everything sealed under the key then opens with its fields null.
//!
//! Unwrapped keys are cached for [`KEY_TTL`]. The process that appends an erasure drops the
//! subject's key from its cache at once ([`Vault::forget`]); **another process may still open
//! the subject's data from its cache for up to [`KEY_TTL`] after the erasure**.
//!
//! A person's registration makes their key and stores it with its events, in the append's own
//! statement ([`Sealer`]); a subject with no key otherwise (one an earlier release stored in
//! clear) gets one on first sealing. A key created that way for an append that then fails (a
//! conflict, a taken claim) stays: it seals nothing, and the next append for the subject uses it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use domain::personal::{self, SEALED_VERSION};
use eventstore::{Opener, Stored, SubjectKey};
use futures::future::BoxFuture;
use moka::future::Cache;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::gcm::{self, Key};
use crate::master::{MasterKey, MasterKeyError};
use crate::sealing::{self, OpenError, SealError, SealedPayload};

/// How long an unwrapped key is kept in memory: how long another process may read an erased
/// subject's data after the erasure.
pub const KEY_TTL: Duration = Duration::from_secs(10);
/// How many unwrapped keys a process keeps at most.
const CACHED_KEYS: u64 = 10_000;
/// A read needing more subjects' keys than this at once is a bulk scan (a rebuild's page, a
/// replay from the start): it reads its keys from the store and keeps them to itself. Its
/// subjects are rarely read again within [`KEY_TTL`], and caching them would only evict the
/// keys of the live path while paying for every insert and eviction.
const BULK_SUBJECTS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("the subject keys could not be read or written")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Unwrap(#[from] MasterKeyError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("a stored payload is not JSON")]
    NotJson(#[from] serde_json::Error),
}

/// Subject keys and what they seal; cheap to clone, one per process.
#[derive(Clone)]
pub struct Vault(Arc<Inner>);

struct Inner {
    pool: PgPool,
    master: Arc<MasterKey>,
    keys: Cache<Uuid, Arc<Key>, foldhash::fast::RandomState>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(..)")
    }
}

impl Vault {
    /// The vault of the store behind `pool`, its keys wrapped under `master`.
    pub fn new(pool: PgPool, master: Arc<MasterKey>) -> Self {
        // Subject ids are made by HAP, not chosen by callers: a fast hash is enough, and
        // room for every key up front spares the growing table its rehashes.
        let keys = Cache::builder()
            .max_capacity(CACHED_KEYS)
            .initial_capacity(CACHED_KEYS as usize)
            .time_to_live(KEY_TTL)
            .build_with_hasher(foldhash::fast::RandomState::default());
        Self(Arc::new(Inner { pool, master, keys }))
    }

    /// `payload` of `event_type` as the store keeps it: its personal fields sealed under the
    /// key of their subject (created if they have none), found in the payload or, for an
    /// event that does not name them, given as `stream_subject`. Any other event type's
    /// payload is returned as it is.
    pub async fn seal(
        &self,
        tenant_id: &str,
        event_type: &str,
        payload: Value,
        stream_subject: Option<Uuid>,
    ) -> Result<Value, VaultError> {
        self.sealer(tenant_id, None)
            .seal(event_type, payload, stream_subject)
            .await
    }

    /// A sealing of one append's events in `tenant_id`, which makes `new_subject` (a person's
    /// registration), if given: that subject can have no key yet, so theirs is made here and
    /// stored by the append itself, with no round trip of its own.
    pub fn sealer<'a>(&'a self, tenant_id: &'a str, new_subject: Option<Uuid>) -> Sealer<'a> {
        Sealer {
            vault: self,
            tenant_id,
            new_subject,
            made: None,
        }
    }

    /// What each of `rows` reads as: `None` where it is as stored (a type with nothing
    /// personal, version 1, nothing sealed), else the payload with its sealed fields back (or
    /// null, the subject erased). The keys missing from the cache are read in one query.
    pub async fn open_all(&self, rows: &[Stored<'_>]) -> Result<Vec<Option<String>>, VaultError> {
        let sealed = rows.iter().map(sealed).collect::<Result<Vec<_>, _>>()?;
        let subjects: HashSet<Uuid> = sealed.iter().flatten().map(|s| s.subject()).collect();
        if subjects.is_empty() {
            return Ok(vec![None; rows.len()]);
        }
        let keys = self.keys(subjects).await?;
        sealed
            .iter()
            .map(|sealed| {
                let Some(sealed) = sealed else {
                    return Ok(None);
                };
                let key = keys.get(&sealed.subject()).map(Arc::as_ref);
                Ok(Some(sealed.open(key)?))
            })
            .collect()
    }

    /// Forgets `subject`'s key in this process, once an append erasing them committed.
    pub async fn forget(&self, subject: Uuid) {
        self.0.keys.invalidate(&subject).await;
    }

    /// `subject`'s key, created (and stored wrapped) if they have none.
    async fn key_for_sealing(
        &self,
        tenant_id: &str,
        subject: Uuid,
    ) -> Result<Arc<Key>, VaultError> {
        if let Some(key) = self.0.keys.get(&subject).await {
            return Ok(key);
        }
        let wrapped = self.0.master.wrap_key(subject, &gcm::random_key());
        // One round trip: the key stored already, or this one, stored now. Another process
        // may create the subject's key at the same time: the first one stored is everyone's
        // (the loser's insert does nothing and, waiting on the winner's row, returns nothing;
        // a statement cannot see a row committed after it began, so it then looks again).
        let stored: Option<Vec<u8>> = sqlx::query_scalar(
            "with stored as (
                 select wrapped from subject_keys where subject_id = $1
             ), made as (
                 insert into subject_keys (subject_id, tenant_id, wrapped)
                 select $1, $2, $3 where not exists (select 1 from stored)
                 on conflict (subject_id) do nothing
                 returning wrapped
             )
             select wrapped from stored union all select wrapped from made",
        )
        .bind(subject)
        .bind(tenant_id)
        .bind(wrapped)
        .fetch_optional(&self.0.pool)
        .await?;
        let stored = match stored {
            Some(stored) => stored,
            None => {
                sqlx::query_scalar("select wrapped from subject_keys where subject_id = $1")
                    .bind(subject)
                    .fetch_one(&self.0.pool)
                    .await?
            }
        };
        let key = Arc::new(Key::new(&self.0.master.unwrap_key(subject, &stored)?));
        self.0.keys.insert(subject, key.clone()).await;
        Ok(key)
    }

    /// The keys of `subjects` that exist (an erased subject has none): from the cache and
    /// the store, or for a bulk read ([`BULK_SUBJECTS`]) from the store alone.
    async fn keys(&self, subjects: HashSet<Uuid>) -> Result<HashMap<Uuid, Arc<Key>>, VaultError> {
        let bulk = subjects.len() > BULK_SUBJECTS;
        let mut keys = HashMap::with_capacity(subjects.len());
        let mut missing = Vec::with_capacity(subjects.len());
        for subject in subjects {
            let cached = if bulk {
                None
            } else {
                self.0.keys.get(&subject).await
            };
            match cached {
                Some(key) => {
                    keys.insert(subject, key);
                }
                None => missing.push(subject),
            }
        }
        if missing.is_empty() {
            return Ok(keys);
        }
        let stored: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
            "select subject_id, wrapped from subject_keys where subject_id = any($1)",
        )
        .bind(&missing)
        .fetch_all(&self.0.pool)
        .await?;
        for (subject, wrapped) in stored {
            let key = Arc::new(Key::new(&self.0.master.unwrap_key(subject, &wrapped)?));
            if !bulk {
                self.0.keys.insert(subject, key.clone()).await;
            }
            keys.insert(subject, key);
        }
        Ok(keys)
    }
}

/// The sealing of one append's events ([`Vault::sealer`]).
pub struct Sealer<'a> {
    vault: &'a Vault,
    tenant_id: &'a str,
    new_subject: Option<Uuid>,
    /// The new subject's key, and its wrapped bytes, once an event needed it.
    made: Option<(Arc<Key>, Vec<u8>)>,
}

impl Sealer<'_> {
    /// As [`Vault::seal`], the new subject's personal fields under the key made for them.
    pub async fn seal(
        &mut self,
        event_type: &str,
        payload: Value,
        stream_subject: Option<Uuid>,
    ) -> Result<Value, VaultError> {
        let Some(personal) = personal::personal(event_type) else {
            return Ok(payload);
        };
        let Value::Object(mut fields) = payload else {
            return Err(SealError::NotAnObject(event_type.to_owned()).into());
        };
        let has_personal = personal
            .fields
            .iter()
            .any(|f| fields.get(*f).is_some_and(|v| !v.is_null()));
        if !has_personal {
            return Ok(Value::Object(fields));
        }
        let subject = sealing::subject_of(personal, &fields, stream_subject)
            .ok_or_else(|| SealError::NoSubject(event_type.to_owned()))?;
        let key = self.key(subject).await?;
        sealing::seal(personal, &mut fields, subject, &key);
        Ok(Value::Object(fields))
    }

    async fn key(&mut self, subject: Uuid) -> Result<Arc<Key>, VaultError> {
        if self.new_subject != Some(subject) {
            return self.vault.key_for_sealing(self.tenant_id, subject).await;
        }
        let (key, _) = self.made.get_or_insert_with(|| {
            let bytes = gcm::random_key();
            let wrapped = self.vault.0.master.wrap_key(subject, &bytes);
            (Arc::new(Key::new(&bytes)), wrapped)
        });
        Ok(key.clone())
    }

    /// The key the append must store with the events, if this sealing made one.
    pub fn new_keys(&self) -> Vec<SubjectKey> {
        let made = self.made.as_ref().zip(self.new_subject);
        made.map(|((_, wrapped), subject)| SubjectKey {
            subject,
            tenant_id: self.tenant_id.to_owned(),
            wrapped: wrapped.clone(),
        })
        .into_iter()
        .collect()
    }

    /// Once the append committed: the made key is cached like any other.
    pub async fn committed(self) {
        if let (Some((key, _)), Some(subject)) = (self.made, self.new_subject) {
            self.vault.0.keys.insert(subject, key).await;
        }
    }
}

/// `row`'s payload, if it has sealed fields.
fn sealed<'a>(row: &Stored<'a>) -> Result<Option<SealedPayload<'a>>, OpenError> {
    if row.schema_version < SEALED_VERSION || personal::personal(row.event_type).is_none() {
        return Ok(None);
    }
    SealedPayload::parse(row.event_type, row.payload)
}

impl Opener for Vault {
    fn open<'a>(
        &'a self,
        rows: &'a [Stored<'a>],
    ) -> BoxFuture<'a, Result<Vec<Option<String>>, sqlx::Error>> {
        Box::pin(async move {
            self.open_all(rows).await.map_err(|error| match error {
                VaultError::Database(error) => error,
                other => sqlx::Error::Decode(Box::new(other)),
            })
        })
    }
}
