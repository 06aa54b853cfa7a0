//! The one way every command runs, whoever sends it (an HTTP request, `hap demo`, a saga step,
//! a deadline, the deactivation follow-up): replay a remembered outcome, load, check the
//! expected version, decide, append with claims, deadlines and the idempotency key in one
//! statement, retry on a version conflict, tell the observers.

use privacy::{MasterKey, Sealer, Vault};
use std::sync::Arc;
use std::time::Duration;

use domain::{Aggregate, DomainError, Event};
use eventstore::{
    Append, AppendError, Erasure, EventStore, Metadata, Remember, Store, StreamVersion,
};
use uuid::Uuid;

use crate::aggregates::{Aggregates, LoadError, Loaded};
use crate::deadlines::Deadlines;
use crate::observer::{AppendObserver, Committed, CommittedEvent};
use crate::outcome::{Done, Outcome, Remembered};
use crate::stored;

/// How many times a command is decided again after another writer got to its stream first.
/// Each retry reloads only the events appended meanwhile.
const ATTEMPTS: usize = 10;

/// Who asks, on whose behalf, and what the command's execution must respect.
#[derive(Debug, Clone)]
pub struct CommandMeta {
    /// The clinic the command acts in: every event, key and claim is scoped by it.
    pub tenant_id: String,
    /// The request (or saga) the command belongs to; stored with every event.
    pub correlation_id: String,
    /// The event that caused this command, when a saga step or a job sends it.
    pub causation_id: Option<Uuid>,
    /// Who acts: the token's `sub` of the request (or of the request that started the saga).
    pub actor_id: Option<String>,
    /// Makes the command safe to repeat: the first outcome is remembered with its events.
    pub idempotency: Option<Idempotency>,
    /// What the command makes or changes when that is not its stream as a whole (a record, in
    /// its consultation's record book): the id its outcome is remembered by.
    pub subject: Option<Uuid>,
    /// The version the aggregate must be at (`If-Match`).
    pub expected: Option<StreamVersion>,
    /// A running deadline the command's events fire: they are appended only if the deadline
    /// is still running, and it is fired in the same statement.
    pub fires: Option<Uuid>,
}

impl CommandMeta {
    pub fn new(tenant_id: impl Into<String>, correlation_id: impl Into<String>) -> Self {
        Self {
            tenant_id: tenant_id.into(),
            correlation_id: correlation_id.into(),
            causation_id: None,
            actor_id: None,
            idempotency: None,
            subject: None,
            expected: None,
            fires: None,
        }
    }
}

/// An idempotency key and the digest of the request it was first used with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub request_hash: String,
    /// Look the key up before deciding. A client's request needs it: a repeat must get the
    /// first answer even where deciding again would now fail differently (a document number
    /// its own first request took). A saga step taken from the local feed does not: its
    /// commands take no claims, a repeat decides again and its append fails on the key
    /// (`KeyTaken`), appending nothing, and the round trip is saved on every first run.
    pub check_first: bool,
}

/// The stream a command is appended to.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// A stream whose id the caller generated for this command (a UUIDv7 no one else can
    /// know yet): it is empty, and reading it would only cost a round trip.
    New(Uuid),
    Existing(Uuid),
}

impl Target {
    fn id(self) -> Uuid {
        match self {
            Self::New(id) | Self::Existing(id) => id,
        }
    }
}

/// Why a command was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A rule of the domain refuses it.
    #[error(transparent)]
    Rejected(#[from] DomainError),
    #[error("the aggregate is at version {current}, not {expected}")]
    PreconditionFailed {
        expected: StreamVersion,
        current: StreamVersion,
    },
    /// A value that must be unique belongs to another aggregate. (Not the value itself in the
    /// message: it is personal data, and messages end up in logs.)
    #[error("a {kind} is already taken")]
    ClaimTaken { kind: String, value: String },
    /// The idempotency key was used with a different request.
    #[error("the idempotency key was used with a different request")]
    KeyReused,
    /// Other writers kept appending to the stream through every retry.
    #[error("the aggregate kept changing concurrently")]
    KeptChanging,
    /// The deadline the command was to end (fire, or pause by confirming its saga) is no
    /// longer running: the other of the two came first.
    #[error("the deadline is no longer running")]
    DeadlineNotRunning,
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("the event store failed")]
    Store(#[source] sqlx::Error),
    /// An event's personal fields could not be sealed: it names no subject, or the subject's
    /// stored key does not unwrap. (A database failure reading or writing the key is a
    /// [`Self::Store`] error.)
    #[error("personal data could not be sealed")]
    Seal(#[source] privacy::VaultError),
}

impl CommandError {
    /// Whether the same command may succeed later (the database answers again, the writers
    /// racing it are done). Every store error counts: besides an outage (which
    /// [`eventstore::is_unavailable`] tells apart, for the HTTP answer) a lock timeout or a
    /// deadlock passes too.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::KeptChanging) || self.store_error().is_some()
    }

    /// The database error behind a failure of the store, if that is what failed.
    pub fn store_error(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Store(error) | Self::Load(LoadError::Store(error)) => Some(error),
            _ => None,
        }
    }
}

/// A loaded state, and whether it was read from the store just now (`fresh`) or may be a stale
/// cache entry.
struct Current<A> {
    loaded: Loaded<A>,
    fresh: bool,
}

impl<A> Current<A> {
    fn fresh(loaded: Loaded<A>) -> Self {
        Self {
            loaded,
            fresh: true,
        }
    }

    /// What appending `appended` events to this state does (the position is the last one
    /// known before them).
    fn done(&self, stream_id: Uuid, appended: usize) -> Done {
        Done {
            stream_id,
            version: StreamVersion::new(self.loaded.version.value() + appended as u64),
            position: self.loaded.position,
            appended,
        }
    }
}

impl<A> std::ops::Deref for Current<A> {
    type Target = Loaded<A>;

    fn deref(&self) -> &Loaded<A> {
        &self.loaded
    }
}

/// What deciding a command once comes to.
enum Decided {
    /// It was decided on a cache entry that may be stale, and must be decided again.
    Stale,
    /// It changes nothing, and there is nothing to remember.
    Nothing(Done),
    Append(Vec<Event>),
}

/// The command pipeline over a store (PostgreSQL's, unless a test gives another); cheap to
/// clone.
#[derive(Clone)]
pub struct Pipeline<S = EventStore> {
    aggregates: Aggregates<S>,
    observers: Arc<Vec<Arc<dyn AppendObserver>>>,
    /// The deadlines its appends start.
    deadlines: Deadlines,
    /// What claims of personal values are hashed with; none: they keep the values (only
    /// without a master key, where authentication is off too).
    master: Option<Arc<MasterKey>>,
    /// What seals the personal fields of the events it appends; none: they are stored in
    /// clear (the in-memory store of unit tests).
    vault: Option<Vault>,
}

impl<S: Store> Pipeline<S> {
    /// A pipeline over `store` keeping up to `cache_capacity` aggregate states in memory;
    /// the deadlines the events start fall due `deadline` later.
    pub fn new(store: S, cache_capacity: u64, deadline: Duration) -> Self {
        Self {
            aggregates: Aggregates::new(store, cache_capacity),
            observers: Arc::default(),
            deadlines: Deadlines::new(deadline),
            master: None,
            vault: None,
        }
    }

    /// The same pipeline, also telling `observer` of every committed append.
    pub fn observed_by(mut self, observer: Arc<dyn AppendObserver>) -> Self {
        Arc::make_mut(&mut self.observers).push(observer);
        self
    }

    /// The same pipeline, its claims of personal values keeping keyed hashes made with
    /// `master` (never the values).
    pub fn hashing_claims_with(mut self, master: Arc<MasterKey>) -> Self {
        self.master = Some(master);
        self
    }

    /// The same pipeline, sealing the personal fields of the events it appends with `vault`.
    pub fn sealing_with(mut self, vault: Vault) -> Self {
        self.vault = Some(vault);
        self
    }

    /// What a claim of `kind` keeps of `value` in the store.
    fn claim_value(&self, kind: &str, value: &str) -> String {
        match &self.master {
            Some(master) => privacy::claims::stored_value(master, kind, value),
            None => value.to_owned(),
        }
    }

    pub fn aggregates(&self) -> &Aggregates<S> {
        &self.aggregates
    }

    pub fn deadlines(&self) -> &Deadlines {
        &self.deadlines
    }

    pub fn store(&self) -> &S {
        self.aggregates.store()
    }

    /// Runs `command` against the aggregate in `target`. The command may be decided several
    /// times (after conflicts), always on a state at least as new as the last one.
    #[tracing::instrument(skip_all, fields(aggregate = A::KIND.as_str(), stream = %target.id()), err(level = "debug"))]
    pub async fn execute<A>(
        &self,
        meta: &CommandMeta,
        target: Target,
        command: A::Command,
    ) -> Result<Outcome, CommandError>
    where
        A: Aggregate,
        A::Command: Clone,
    {
        if meta.idempotency.as_ref().is_some_and(|i| i.check_first)
            && let Some(replayed) = self.replay(meta).await?
        {
            return Ok(Outcome::Replayed(replayed));
        }
        let mut loaded = self.load::<A>(meta, target, &command).await?;
        for _ in 0..ATTEMPTS {
            let events = match self.decide(meta, target.id(), &loaded, command.clone())? {
                Decided::Stale => {
                    loaded = self.reload(target).await?;
                    continue;
                }
                Decided::Nothing(done) => return Ok(Outcome::Done(done)),
                Decided::Append(events) => events,
            };
            match self.commit(meta, target.id(), loaded, events).await? {
                Some(outcome) => return Ok(outcome),
                None => {
                    tracing::debug!("version conflict, deciding again");
                    loaded = self.reload(target).await?;
                }
            }
        }
        Err(CommandError::KeptChanging)
    }

    /// The state the command is first decided on: the empty one for a new stream, else the
    /// cached one if there is one (a stale entry ends in a conflict), else the stored one.
    /// Another tenant's aggregate does not exist for this one: its commands are decided on
    /// the empty state (not found), and never appended to its stream.
    async fn load<A: Aggregate>(
        &self,
        meta: &CommandMeta,
        target: Target,
        command: &A::Command,
    ) -> Result<Current<A>, CommandError>
    where
        A::Command: Clone,
    {
        let tenant = meta.tenant_id.as_str();
        let loaded = match target {
            Target::New(_) => Current::fresh(Loaded::default()),
            Target::Existing(id) => match self.aggregates.cached::<A>(id).await {
                Some(hit) if hit.belongs_to(tenant) => Current {
                    loaded: hit,
                    fresh: false,
                },
                _ => Current::fresh(self.aggregates.current::<A>(id).await?),
            },
        };
        if !loaded.belongs_to(tenant) {
            let refusal = A::default().decide(command.clone()).err();
            return Err(CommandError::Rejected(
                refusal.unwrap_or(DomainError::NotFound(A::KIND.as_str())),
            ));
        }
        Ok(loaded)
    }

    /// The state of `target` as stored now.
    async fn reload<A: Aggregate>(&self, target: Target) -> Result<Current<A>, CommandError> {
        Ok(Current::fresh(self.aggregates.current(target.id()).await?))
    }

    /// Decides the command on `loaded`. Only an append of events is protected by the version
    /// check; a refusal, a no-op or a failed precondition decided on a stale cache entry
    /// would be wrong, so those ask to be decided again on the stored state first.
    fn decide<A: Aggregate>(
        &self,
        meta: &CommandMeta,
        stream_id: Uuid,
        loaded: &Current<A>,
        command: A::Command,
    ) -> Result<Decided, CommandError> {
        let decision = loaded.state.decide(command);
        // On a stream that does not exist the command's own rule answers (not found), not
        // the precondition.
        let precondition_failed = loaded.version != StreamVersion::EMPTY
            && meta.expected.is_some_and(|v| v != loaded.version);
        let accepted = matches!(&decision, Ok(events) if !events.is_empty());
        if !loaded.fresh && (precondition_failed || !accepted) {
            return Ok(Decided::Stale);
        }
        if !loaded.belongs_to(&meta.tenant_id) {
            return Err(CommandError::Rejected(DomainError::NotFound(
                A::KIND.as_str(),
            )));
        }
        if let Some(expected) = meta.expected.filter(|_| precondition_failed) {
            return Err(CommandError::PreconditionFailed {
                expected,
                current: loaded.version,
            });
        }
        let events = decision?;
        // A no-op with a key still appends, to remember its outcome.
        if events.is_empty() && meta.idempotency.is_none() {
            return Ok(Decided::Nothing(loaded.done(stream_id, 0)));
        }
        Ok(Decided::Append(events))
    }
    /// Appends `events` after `loaded` and, once they are committed, caches the new state and
    /// tells the observers. `None` when another writer appended to the stream first.
    async fn commit<A: Aggregate>(
        &self,
        meta: &CommandMeta,
        stream_id: Uuid,
        loaded: Current<A>,
        events: Vec<Event>,
    ) -> Result<Option<Outcome>, CommandError> {
        let mut append = self.append_of(meta, stream_id, &loaded, &events);
        let planned = loaded.done(stream_id, events.len());
        let (version_before, position_before) = (loaded.version, loaded.position);
        // The state the events lead to: the subject of their stream, and what is cached.
        let state = events.iter().fold(loaded.loaded.state, |s, e| s.evolve(e));
        // A new stream whose subject it is itself makes that subject: a registration.
        let new_subject = state
            .data_subject()
            .filter(|subject| version_before == StreamVersion::EMPTY && *subject == stream_id);
        let tenant = meta.tenant_id.as_str();
        let mut sealer = self.vault.as_ref().map(|v| v.sealer(tenant, new_subject));
        if let Some(sealer) = &mut sealer {
            seal(sealer, &mut append, state.data_subject()).await?;
        }
        let stored: Vec<_> = append
            .events
            .iter()
            .map(|e| (e.event_id, e.occurred_at))
            .collect();
        let erased = append.erases.as_ref().map(|e| e.subject);
        let appended = match self.store().append(append).await {
            Ok(appended) => appended,
            Err(refusal) => return self.refused(meta, refusal, &events).await,
        };
        if let (Some(vault), Some(subject)) = (&self.vault, erased) {
            vault.forget(subject).await;
        }
        if let Some(sealer) = sealer {
            sealer.committed().await;
        }
        let done = Done {
            position: appended.position().or(position_before),
            ..planned
        };
        let committed = Committed {
            stream_id,
            tenant_id: meta.tenant_id.clone(),
            correlation_id: meta.correlation_id.clone(),
            causation_id: meta.causation_id,
            actor_id: meta.actor_id.clone(),
            events: (version_before.as_i64() + 1..)
                .zip(events.iter().zip(stored).zip(&appended.positions))
                .map(
                    |(version, ((event, (event_id, occurred_at)), position))| CommittedEvent {
                        event_id,
                        version,
                        position: *position,
                        occurred_at,
                        event: event.clone(),
                    },
                )
                .collect(),
        };
        let now = Loaded {
            state,
            version: appended.version,
            position: done.position,
            tenant_id: Some(meta.tenant_id.clone()),
        };
        self.aggregates.remember(stream_id, now).await;
        self.tell_observers(&committed).await;
        Ok(Some(Outcome::Done(done)))
    }

    /// What a refused append answers: `None` for a version conflict (decide again).
    async fn refused(
        &self,
        meta: &CommandMeta,
        refusal: AppendError,
        events: &[Event],
    ) -> Result<Option<Outcome>, CommandError> {
        match refusal {
            AppendError::Conflict { .. } => Ok(None),
            // A request with the same key committed first: answer as it did.
            AppendError::KeyTaken => match self.replay(meta).await? {
                Some(replayed) => Ok(Some(Outcome::Replayed(replayed))),
                None => Err(CommandError::KeptChanging),
            },
            AppendError::ClaimTaken { kind, value } => {
                // The store names the value it keeps; the caller is told the one it sent.
                let sent = stored::claims(events)
                    .into_iter()
                    .find(|c| c.kind == kind && self.claim_value(&c.kind, &c.value) == value);
                let value = sent.map_or(value, |c| c.value);
                Err(CommandError::ClaimTaken { kind, value })
            }
            AppendError::DeadlineNotRunning(_) => Err(CommandError::DeadlineNotRunning),
            AppendError::Database(error) => Err(CommandError::Store(error)),
        }
    }

    async fn tell_observers(&self, committed: &Committed) {
        if committed.events.is_empty() {
            return;
        }
        for observer in self.observers.iter() {
            observer.committed(committed).await;
        }
    }

    /// The append that stores `events` after `loaded`, with everything that must commit with
    /// them.
    fn append_of<A: Aggregate>(
        &self,
        meta: &CommandMeta,
        stream_id: Uuid,
        loaded: &Current<A>,
        events: &[Event],
    ) -> Append {
        let metadata = Metadata {
            tenant_id: meta.tenant_id.clone(),
            correlation_id: meta.correlation_id.clone(),
            causation_id: meta.causation_id,
            actor_id: meta.actor_id.clone(),
        };
        let mut append = stored::append::<A>(stream_id, loaded.version, events, metadata);
        for claim in &mut append.claims {
            claim.value = self.claim_value(&claim.kind, &claim.value);
        }
        let done = loaded.done(stream_id, events.len());
        append.remember = meta.idempotency.as_ref().map(|i| Remember {
            key: i.key.clone(),
            request_hash: i.request_hash.clone(),
            outcome: serde_json::to_value(Remembered::of(&done, meta.subject))
                .expect("an outcome is plain JSON"),
        });
        append.deadlines = self.deadlines.started_by(events);
        append.ends = Deadlines::ended_by(meta.fires, events);
        append.erases = events
            .iter()
            .find_map(Event::erases_subject)
            .map(|subject| Erasure {
                subject,
                claim_kinds: privacy::claims::PERSONAL
                    .iter()
                    .map(|k| (*k).to_owned())
                    .collect(),
            });
        append
    }

    /// The remembered outcome of the command's idempotency key, if there is one.
    async fn replay(&self, meta: &CommandMeta) -> Result<Option<Remembered>, CommandError> {
        let Some(idempotency) = &meta.idempotency else {
            return Ok(None);
        };
        let stored = self
            .store()
            .remembered_outcome(&meta.tenant_id, &idempotency.key)
            .await
            .map_err(CommandError::Store)?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        if stored.request_hash != idempotency.request_hash {
            return Err(CommandError::KeyReused);
        }
        serde_json::from_value(stored.outcome)
            .map(Some)
            .map_err(|error| CommandError::Store(sqlx::Error::Decode(error.into())))
    }
}

/// Seals the personal fields of `append`'s events with `sealer`; the subject of an event that
/// names none is `stream_subject`, that of its stream after the events. The key of a subject
/// the append makes goes with it.
async fn seal(
    sealer: &mut Sealer<'_>,
    append: &mut Append,
    stream_subject: Option<Uuid>,
) -> Result<(), CommandError> {
    for event in &mut append.events {
        if domain::personal::personal(&event.event_type).is_none() {
            continue;
        }
        let payload = std::mem::take(&mut event.payload);
        event.payload = sealer
            .seal(&event.event_type, payload, stream_subject)
            .await
            .map_err(|error| match error {
                privacy::VaultError::Database(error) => CommandError::Store(error),
                other => CommandError::Seal(other),
            })?;
    }
    append.new_keys = sealer.new_keys();
    Ok(())
}
