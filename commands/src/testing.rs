//! Given/when/then tests of commands and of whatever sends them (saga steps, the timer), in the
//! style of cqrs-es' `TestFramework`, over a store in memory ([`MemoryStore`]): no services.
//!
//! ```ignore
//! given()
//!     .events::<Patient>(id, [registered])
//!     .when_command::<Patient>(meta(), Target::Existing(id), deactivate)
//!     .await
//!     .then_events([deactivated]);
//! ```
//!
//! `when` runs any future over the pipeline, so a saga step or a timer built on it is tested
//! the same way; `then_…` check the events it appended, its result, and the deadlines.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use domain::{Aggregate, Event};
use eventstore::{DeadlineState, MemoryStore, Metadata, StreamVersion};
use uuid::Uuid;

use crate::deadlines::Deadlines;
use crate::outcome::Outcome;
use crate::pipeline::{CommandError, CommandMeta, Pipeline, Target};
use crate::stored;

/// The tenant every given event and every command of a test belongs to.
pub const TENANT: &str = "tenant-a";
/// How long the deadlines that given events and commands start run.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A test's history, before anything happens.
pub struct Given {
    store: MemoryStore,
    pipeline: Pipeline<MemoryStore>,
}

/// An empty store, with a pipeline over it.
pub fn given() -> Given {
    let store = MemoryStore::new();
    Given {
        pipeline: Pipeline::new(store.clone(), 1_000, DEADLINE),
        store,
    }
}

/// A command's meta in [`TENANT`], with nothing else asked.
pub fn meta() -> CommandMeta {
    CommandMeta::new(TENANT, "test-correlation")
}

impl Given {
    /// `events` appended to the stream of an `A` (in [`TENANT`]), as the pipeline would append
    /// them: with their claims, and starting and pausing deadlines.
    pub fn events<A: Aggregate>(
        self,
        stream: Uuid,
        events: impl IntoIterator<Item = Event>,
    ) -> Self {
        self.events_in::<A>(TENANT, stream, events)
    }

    /// The same in another tenant.
    pub fn events_in<A: Aggregate>(
        self,
        tenant: &str,
        stream: Uuid,
        events: impl IntoIterator<Item = Event>,
    ) -> Self {
        let events: Vec<Event> = events.into_iter().collect();
        let version = self
            .store
            .events()
            .iter()
            .filter(|e| e.stream_id == stream)
            .count();
        let metadata = Metadata {
            tenant_id: tenant.to_owned(),
            correlation_id: "given".to_owned(),
            causation_id: None,
            actor_id: None,
        };
        let expected = StreamVersion::new(version as u64);
        let mut append = stored::append::<A>(stream, expected, &events, metadata);
        append.deadlines = self.pipeline.deadlines().started_by(&events);
        append.ends = Deadlines::ended_by(None, &events);
        if let Err(error) = self.store.append_now(append) {
            panic!("the given events could not be appended: {error}");
        }
        self
    }

    /// The pipeline of the test, to build what sends commands on it (a saga step, a timer).
    pub fn pipeline(&self) -> &Pipeline<MemoryStore> {
        &self.pipeline
    }

    /// The store of the test, to set up what no event does (say, a deadline due by now).
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// Runs `when` on the pipeline; what it answers, and what it appended, are the `then`.
    pub async fn when<T, F>(self, when: impl FnOnce(Pipeline<MemoryStore>) -> F) -> Then<T>
    where
        F: Future<Output = T>,
    {
        let before = self.store.events().len();
        let result = when(self.pipeline.clone()).await;
        Then {
            store: self.store,
            before,
            result,
        }
    }

    /// Runs `command` on the aggregate in `target`, with `meta` ([`meta`] for a plain one).
    pub async fn when_command<A>(
        self,
        meta: CommandMeta,
        target: Target,
        command: A::Command,
    ) -> Then<Result<Outcome, CommandError>>
    where
        A: Aggregate,
        A::Command: Clone,
    {
        self.when(|pipeline| async move { pipeline.execute::<A>(&meta, target, command).await })
            .await
    }
}

/// What happened: the result of the `when`, and the events it appended.
pub struct Then<T> {
    store: MemoryStore,
    /// How many events there were before the `when`.
    before: usize,
    pub result: T,
}

impl<T: Debug> Then<T> {
    /// The events the `when` appended, in order, over every stream.
    pub fn appended(&self) -> Vec<Event> {
        self.store.events()[self.before..]
            .iter()
            .flat_map(|recorded| {
                domain::versions::decode(
                    &recorded.event_type,
                    recorded.schema_version,
                    recorded.payload.get(),
                )
                .unwrap_or_else(|error| panic!("a stored event is undecodable: {error}"))
            })
            .collect()
    }

    /// Then exactly `expected` were appended, in this order.
    #[track_caller]
    pub fn then_events(self, expected: impl IntoIterator<Item = Event>) -> Self {
        let expected: Vec<Event> = expected.into_iter().collect();
        assert_eq!(self.appended(), expected, "result: {:?}", self.result);
        self
    }

    /// Then nothing was appended.
    #[track_caller]
    pub fn then_no_events(self) -> Self {
        self.then_events([])
    }

    /// Then the deadline `id` is in `state`.
    #[track_caller]
    pub fn then_deadline(self, id: Uuid, state: DeadlineState) -> Self {
        let deadline = self.store.deadline(id).map(|d| d.state);
        assert_eq!(deadline, Some(state), "the deadline of {id}");
        self
    }

    /// The store afterwards, for what the other checks do not cover.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }
}

impl<T: Debug, E: Debug> Then<Result<T, E>> {
    /// Then the `when` succeeded, with `check` true of what it answered.
    #[track_caller]
    pub fn then_ok(self, check: impl FnOnce(&T) -> bool) -> Self {
        expect(self.result.as_ref(), check, "answer");
        self
    }

    /// Then the `when` failed, with `check` true of its error.
    #[track_caller]
    pub fn then_error(self, check: impl FnOnce(&E) -> bool) -> Self {
        let error = match &self.result {
            Err(error) => Ok(error),
            Ok(answer) => Err(answer),
        };
        expect(error, check, "error");
        self
    }
}

/// Asserts that `got` is the `wanted` side, and that `check` is true of it.
#[track_caller]
fn expect<W: Debug, O: Debug>(got: Result<&W, &O>, check: impl FnOnce(&W) -> bool, wanted: &str) {
    match got {
        Ok(value) => assert!(check(value), "unexpected {wanted}: {value:?}"),
        Err(other) => panic!("expected an {wanted}, got {other:?}"),
    }
}
