//! A clinic's day at a steady rate, from several tenants at once: patients and physicians
//! registered, updated and deactivated, consultations requested on contended slots, cancelled
//! and annotated, records written and rewritten.
//!
//! Each tenant has few physicians and few start times (two days of four half-hour slots,
//! some requests an hour long), so several requests compete for one slot and most lose it;
//! cancellations and deactivations free slots for later requests. Deactivations pick the
//! person whose consultation was requested last, and one accepted consultation request in
//! eight is chased by the deactivation of its patient or physician within 300 ms, so that the
//! deactivation meets a consultation still being scheduled. What
//! is scheduled is learnt the way a client would: each tenant polls
//! `GET /consultations?status=scheduled` every second, on the API processes in turn.
//!
//! Every command carries an `Idempotency-Key`; one without an answer is sent again with it
//! (see [`super::client`]), and after the faults once more, for longer, so that every outcome
//! is known. One accepted command in twenty is sent a second time with its key, as a client
//! that missed the answer would, and must get the same answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{NaiveDate, NaiveTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::client::{Api, Call, Sent};
use super::ledger::{Accepted, Kind, Ledger, Unanswered};

/// How long a command is retried during the run before it is left for the pass after it.
const RUN_BUDGET: Duration = Duration::from_secs(20);
/// How long each unanswered command is retried after the faults.
const RESOLVE_BUDGET: Duration = Duration::from_secs(60);
/// Requests in flight at most; past it the schedule slips.
const MAX_IN_FLIGHT: usize = 256;
/// How often each tenant reads which of its consultations are scheduled.
const POLL: Duration = Duration::from_secs(1);
/// Physicians and patients each tenant starts with.
const FIRST_PHYSICIANS: usize = 3;
const FIRST_PATIENTS: usize = 5;
/// Active physicians a tenant keeps at least (a deactivation below it registers one instead)
/// and at most (more would end the contention).
const MIN_PHYSICIANS: usize = 2;
const MAX_PHYSICIANS: usize = 4;
const MIN_PATIENTS: usize = 4;
/// Slot start times on each of the two booked days (UTC), half an hour apart.
const SLOTS: [(u32, u32); 4] = [(9, 0), (9, 30), (10, 0), (10, 30)];
/// A request that names someone who asked for a consultation this recently counts as "in
/// flight" for a deactivation.
const IN_FLIGHT: Duration = Duration::from_secs(3);
/// One accepted consultation request in this many is chased by the deactivation of its
/// patient or physician, this many ms after the answer: while the saga schedules it.
const CHASE_ONE_IN: u32 = 8;
const CHASE_DELAY_MS: std::ops::RangeInclusive<u64> = 0..=300;
/// One accepted command in this many is sent again with its key.
const REPLAY_ONE_IN: u32 = 20;

const SPECIALTIES: [&str; 3] = ["cardiology", "dermatology", "pediatrics"];

/// The command mix, by weight.
const MIX: [(Kind, u32); 11] = [
    (Kind::RequestConsultation, 36),
    (Kind::RegisterPatient, 6),
    (Kind::RegisterPhysician, 2),
    (Kind::UpdatePatient, 6),
    (Kind::UpdatePhysician, 3),
    (Kind::DeactivatePatient, 4),
    (Kind::DeactivatePhysician, 2),
    (Kind::CancelConsultation, 9),
    (Kind::UpdateConsultation, 8),
    (Kind::CreateRecord, 12),
    (Kind::UpdateRecord, 10),
];

/// A patient or physician as the client knows it.
#[derive(Debug, Clone)]
struct Person {
    id: Uuid,
    /// False once a deactivation of it was accepted.
    active: bool,
    /// When a consultation naming it was last requested.
    booked_at: Option<Instant>,
}

/// One tenant's clinic as the client knows it.
struct Tenant {
    name: String,
    token: String,
    patients: Vec<Person>,
    physicians: Vec<Person>,
    /// Its consultations the last poll found scheduled.
    scheduled: Vec<Uuid>,
    records: Vec<Uuid>,
}

impl Tenant {
    fn active(people: &[Person]) -> impl Iterator<Item = &Person> {
        people.iter().filter(|p| p.active)
    }

    /// Command number `n` of this tenant, with its own idempotency key and correlation id.
    fn call(&self, n: u64, method: Method, path: String, body: Option<Value>) -> Call {
        Call {
            method,
            path,
            body,
            token: self.token.clone(),
            key: Some(format!("chaos-{n}")),
            correlation: format!("chaos-{}-{n}", self.name),
        }
    }
}

/// A command ready to send, and what its acceptance teaches the client.
struct Planned {
    kind: Kind,
    tenant: usize,
    call: Call,
    replay: bool,
    /// For a consultation request: deactivate this person (with this kind of command) this
    /// long after it is accepted, while the saga is scheduling it.
    chase: Option<(Kind, Uuid, Duration)>,
}

/// The workload: the tenants' clinics, the client and what it learnt.
pub struct Workload {
    api: Arc<Api>,
    tenants: Vec<Mutex<Tenant>>,
    ledger: Mutex<Ledger>,
    rng: Mutex<StdRng>,
    /// Numbers requests, for keys, correlation ids and unique field values.
    next: AtomicU64,
    /// The first booked day: far enough ahead that every slot is in the future all run long.
    first_day: NaiveDate,
}

impl Workload {
    /// A workload for `tenants` (name and token), its choices drawn from `seed`.
    pub fn new(api: Arc<Api>, tenants: Vec<(String, String)>, seed: u64) -> Self {
        Self {
            api,
            tenants: tenants
                .into_iter()
                .map(|(name, token)| {
                    Mutex::new(Tenant {
                        name,
                        token,
                        patients: vec![],
                        physicians: vec![],
                        scheduled: vec![],
                        records: vec![],
                    })
                })
                .collect(),
            ledger: Mutex::new(Ledger::default()),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            next: AtomicU64::new(1),
            first_day: (Utc::now() + chrono::Duration::days(3)).date_naive(),
        }
    }

    /// What the client learnt, taken once the workload is over.
    pub fn ledger(&self) -> Ledger {
        std::mem::take(&mut *self.ledger.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Each tenant's first physicians and patients, before the clock starts.
    pub async fn set_up(&self) {
        let planned: Vec<Planned> = (0..self.tenants.len())
            .flat_map(|tenant| {
                std::iter::repeat_n(Kind::RegisterPhysician, FIRST_PHYSICIANS)
                    .chain(std::iter::repeat_n(Kind::RegisterPatient, FIRST_PATIENTS))
                    .map(move |kind| self.build(tenant, kind))
            })
            .collect();
        futures::future::join_all(planned.into_iter().map(|p| self.execute(p))).await;
    }

    /// Sends operations at `rate` per second for `duration`, while each tenant polls what is
    /// scheduled; returns when every operation sent has ended.
    pub async fn run(self: &Arc<Self>, rate: u64, duration: Duration) {
        let polling = CancellationToken::new();
        let mut pollers = JoinSet::new();
        for tenant in 0..self.tenants.len() {
            let (workload, stop) = (Arc::clone(self), polling.clone());
            pollers.spawn(async move { workload.poll(tenant, stop).await });
        }
        let started = tokio::time::Instant::now();
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut operations = JoinSet::new();
        for n in 0u32.. {
            let due = started + interval * n;
            if due >= started + duration {
                break;
            }
            tokio::time::sleep_until(due).await;
            let planned = self.next_operation();
            let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                break;
            };
            let workload = Arc::clone(self);
            operations.spawn(async move {
                workload.execute(planned).await;
                drop(permit);
            });
        }
        while operations.join_next().await.is_some() {}
        polling.cancel();
        while pollers.join_next().await.is_some() {}
    }

    /// Sends every command that got no answer once more with its key, each for up to
    /// [`RESOLVE_BUDGET`]; those still unanswered stay in the ledger.
    pub async fn resolve(&self) {
        let unanswered = std::mem::take(
            &mut self
                .ledger
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .unanswered,
        );
        if !unanswered.is_empty() {
            eprintln!(
                "sending {} unanswered commands again with their keys…",
                unanswered.len()
            );
        }
        let resolved = unanswered
            .into_iter()
            .map(|Unanswered { kind, tenant, call }| async move {
                self.ledger
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .uncount_unanswered(kind);
                let sent = self.api.send(&call, RESOLVE_BUDGET).await;
                // It was sent before: count it as retried whatever this attempt took.
                let sent = Sent {
                    attempts: sent.attempts + 1,
                    ..sent
                };
                self.settle(
                    Planned {
                        kind,
                        tenant,
                        call,
                        replay: false,
                        chase: None,
                    },
                    sent,
                )
                .await;
            });
        futures::future::join_all(resolved).await;
    }

    fn draw<T>(&self, draw: impl FnOnce(&mut StdRng) -> T) -> T {
        draw(&mut self.rng.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn number(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The next operation of the mix, for a tenant drawn at random.
    fn next_operation(&self) -> Planned {
        let (tenant, kind) = self.draw(|rng| {
            let tenant = rng.random_range(0..self.tenants.len());
            let kind = MIX
                .choose_weighted(rng, |(_, weight)| *weight)
                .map_or(Kind::RequestConsultation, |(kind, _)| *kind);
            (tenant, kind)
        });
        let kind = {
            let state = self.tenants[tenant]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let active_physicians = Tenant::active(&state.physicians).count();
            // What the clinic lacks comes first.
            if active_physicians < MIN_PHYSICIANS {
                Kind::RegisterPhysician
            } else if Tenant::active(&state.patients).count() < MIN_PATIENTS {
                Kind::RegisterPatient
            } else if kind == Kind::RegisterPhysician && active_physicians >= MAX_PHYSICIANS {
                Kind::RequestConsultation
            } else {
                kind
            }
        };
        self.build(tenant, kind)
    }

    /// A command of `kind` for `tenant`, or what the clinic needs instead when there is
    /// nothing to apply it to (a patient to register, a consultation to request).
    fn build(&self, tenant: usize, kind: Kind) -> Planned {
        let n = self.number();
        let mut state = self.tenants[tenant]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let active_physicians = Tenant::active(&state.physicians).count();
        let mut chase = None;
        let fallback = Kind::RequestConsultation;
        let (path, method, body) = match kind {
            Kind::RegisterPatient => (
                "/patients".to_owned(),
                Method::POST,
                Some(json!({
                    "name": format!("Patient {n}"),
                    "birthDate": "1984-03-07",
                    "documentNumber": format!("doc-{n}"),
                    "email": format!("patient{n}@example.org"),
                })),
            ),
            Kind::RegisterPhysician => (
                "/physicians".to_owned(),
                Method::POST,
                Some(json!({
                    "name": format!("Dr. Physician {n}"),
                    "specialty": SPECIALTIES[n as usize % SPECIALTIES.len()],
                    "licenseNumber": format!("lic-{n}"),
                })),
            ),
            Kind::UpdatePatient => {
                let Some(patient) = self.draw(|rng| state.patients.choose(rng).map(|p| p.id))
                else {
                    drop(state);
                    return self.build(tenant, Kind::RegisterPatient);
                };
                (
                    format!("/patients/{patient}"),
                    Method::PATCH,
                    Some(json!({ "phone": format!("+55 11 9{:08}", n % 100_000_000) })),
                )
            }
            Kind::UpdatePhysician => {
                let Some(physician) = self.draw(|rng| state.physicians.choose(rng).map(|p| p.id))
                else {
                    drop(state);
                    return self.build(tenant, fallback);
                };
                (
                    format!("/physicians/{physician}"),
                    Method::PATCH,
                    Some(json!({ "name": format!("Dr. Renamed {n}") })),
                )
            }
            Kind::DeactivatePatient | Kind::DeactivatePhysician => {
                let people = if kind == Kind::DeactivatePatient {
                    &state.patients
                } else {
                    &state.physicians
                };
                // The one whose consultation was requested last, while it is being scheduled.
                let target = Tenant::active(people)
                    .filter(|p| p.booked_at.is_some_and(|at| at.elapsed() < IN_FLIGHT))
                    .max_by_key(|p| p.booked_at)
                    .map(|p| p.id);
                let enough = kind == Kind::DeactivatePatient || active_physicians > MIN_PHYSICIANS;
                let (Some(target), true) = (target, enough) else {
                    drop(state);
                    return self.build(tenant, fallback);
                };
                deactivation(kind, target, n)
            }
            Kind::RequestConsultation => {
                let drawn = self.draw(|rng| {
                    // Mostly active people; now and then anyone, so the saga refuses some.
                    let anyone = rng.random_ratio(1, 10);
                    let pick = |people: &[Person], rng: &mut StdRng| {
                        let candidates: Vec<&Person> =
                            people.iter().filter(|p| anyone || p.active).collect();
                        candidates.choose(rng).map(|p| p.id)
                    };
                    let patient = pick(&state.patients, rng)?;
                    let physician = pick(&state.physicians, rng)?;
                    let day = self.first_day + chrono::Duration::days(rng.random_range(0..2));
                    let (hour, minute) = *SLOTS.choose(rng)?;
                    let minutes = if rng.random_ratio(1, 5) { 60 } else { 30 };
                    Some((patient, physician, day, hour, minute, minutes))
                });
                let Some((patient, physician, day, hour, minute, minutes)) = drawn else {
                    drop(state);
                    return self.build(tenant, Kind::RegisterPatient);
                };
                chase = self.draw(|rng| {
                    if !rng.random_ratio(1, CHASE_ONE_IN) {
                        return None;
                    }
                    let delay = Duration::from_millis(rng.random_range(CHASE_DELAY_MS));
                    if rng.random_ratio(2, 3) {
                        Some((Kind::DeactivatePatient, patient, delay))
                    } else {
                        (active_physicians > MIN_PHYSICIANS).then_some((
                            Kind::DeactivatePhysician,
                            physician,
                            delay,
                        ))
                    }
                });
                // Both are "in flight" from now, for the deactivations.
                let now = Instant::now();
                let state = &mut *state;
                for (people, id) in [
                    (&mut state.patients, patient),
                    (&mut state.physicians, physician),
                ] {
                    for person in people.iter_mut().filter(|p| p.id == id) {
                        person.booked_at = Some(now);
                    }
                }
                let starts_at = day
                    .and_time(NaiveTime::from_hms_opt(hour, minute, 0).unwrap_or_default())
                    .and_utc();
                (
                    "/consultations".to_owned(),
                    Method::POST,
                    Some(json!({
                        "patientId": patient,
                        "physicianId": physician,
                        "startsAt": starts_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                        "durationMinutes": minutes,
                        "reason": format!("check-up {n}"),
                    })),
                )
            }
            Kind::UpdateConsultation | Kind::CancelConsultation | Kind::CreateRecord => {
                let Some(consultation) = self.draw(|rng| state.scheduled.choose(rng).copied())
                else {
                    drop(state);
                    return self.build(tenant, fallback);
                };
                match kind {
                    Kind::UpdateConsultation => (
                        format!("/consultations/{consultation}"),
                        Method::PATCH,
                        Some(json!({ "notes": format!("note {n}") })),
                    ),
                    Kind::CancelConsultation => (
                        format!("/consultations/{consultation}/cancel"),
                        Method::POST,
                        Some(json!({ "reason": format!("cannot come ({n})") })),
                    ),
                    _ => (
                        format!("/consultations/{consultation}/records"),
                        Method::POST,
                        Some(json!({ "content": format!("anamnesis {n}") })),
                    ),
                }
            }
            Kind::UpdateRecord => {
                let Some(record) = self.draw(|rng| state.records.choose(rng).copied()) else {
                    drop(state);
                    return self.build(tenant, Kind::CreateRecord);
                };
                (
                    format!("/records/{record}"),
                    Method::PATCH,
                    Some(json!({ "content": format!("revised {n}") })),
                )
            }
        };
        let call = state.call(n, method, path, body);
        drop(state);
        let replay = self.draw(|rng| rng.random_ratio(1, REPLAY_ONE_IN));
        Planned {
            kind,
            tenant,
            call,
            replay,
            chase,
        }
    }

    /// The deactivation of `person` (`kind` says patient or physician) for `tenant`.
    fn deactivate(&self, tenant: usize, kind: Kind, person: Uuid) -> Planned {
        let n = self.number();
        let state = self.tenants[tenant]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (path, method, body) = deactivation(kind, person, n);
        Planned {
            kind,
            tenant,
            call: state.call(n, method, path, body),
            replay: false,
            chase: None,
        }
    }

    /// Sends a command and learns from its answer.
    async fn execute(&self, planned: Planned) {
        let sent = self.api.send(&planned.call, RUN_BUDGET).await;
        self.settle(planned, sent).await;
    }

    /// Books the end of a command, updates the clinic with an accepted one, and sends it
    /// again with its key where the draw said so.
    async fn settle(&self, planned: Planned, sent: Sent) {
        let Some(answer) = sent.answer else {
            let mut ledger = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
            ledger.count(planned.kind, None, sent.attempts);
            ledger.unanswered.push(Unanswered {
                kind: planned.kind,
                tenant: planned.tenant,
                call: planned.call,
            });
            return;
        };
        let accepted = (200..300).contains(&answer.status);
        let id = answer.body["id"]
            .as_str()
            .and_then(|id| id.parse::<Uuid>().ok());
        let version = answer.body["version"].as_i64();
        {
            let mut ledger = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
            ledger.count(planned.kind, Some(answer.status), sent.attempts);
            if accepted {
                match (id, version) {
                    (Some(id), Some(version)) => ledger.accepted.push(Accepted {
                        kind: planned.kind,
                        tenant: self.tenant_name(planned.tenant),
                        id,
                        version,
                        correlation: planned.call.correlation.clone(),
                    }),
                    _ => ledger.replay_mismatches.push(format!(
                        "{} answered {} without an id and version: {}",
                        planned.kind.route(),
                        answer.status,
                        answer.body
                    )),
                }
            }
        }
        if let (true, Some(id)) = (accepted, id) {
            self.learn(planned.tenant, planned.kind, id);
        }
        if let (true, Some((kind, person, delay))) = (accepted, planned.chase) {
            tokio::time::sleep(delay).await;
            let chaser = self.deactivate(planned.tenant, kind, person);
            Box::pin(self.execute(chaser)).await;
        }
        if accepted && planned.replay {
            let again = self.api.send(&planned.call, RUN_BUDGET).await;
            let mut ledger = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
            match again.answer {
                Some(second) if second == answer => ledger.replays += 1,
                Some(second) => ledger.replay_mismatches.push(format!(
                    "{} (key {}) answered {} {} the first time and {} {} with the same key",
                    planned.kind.route(),
                    planned.call.key.as_deref().unwrap_or("-"),
                    answer.status,
                    answer.body,
                    second.status,
                    second.body
                )),
                // No answer to the repeat says nothing about idempotency.
                None => {}
            }
        }
    }

    fn tenant_name(&self, tenant: usize) -> String {
        self.tenants[tenant]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .name
            .clone()
    }

    /// What an accepted command adds to the clinic the client knows.
    fn learn(&self, tenant: usize, kind: Kind, id: Uuid) {
        let mut state = self.tenants[tenant]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let person = Person {
            id,
            active: true,
            booked_at: None,
        };
        match kind {
            Kind::RegisterPatient if !state.patients.iter().any(|p| p.id == id) => {
                state.patients.push(person);
            }
            Kind::RegisterPhysician if !state.physicians.iter().any(|p| p.id == id) => {
                state.physicians.push(person);
            }
            Kind::DeactivatePatient | Kind::DeactivatePhysician => {
                let people = if kind == Kind::DeactivatePatient {
                    &mut state.patients
                } else {
                    &mut state.physicians
                };
                for p in people.iter_mut().filter(|p| p.id == id) {
                    p.active = false;
                }
            }
            Kind::CancelConsultation => state.scheduled.retain(|c| *c != id),
            Kind::CreateRecord if !state.records.contains(&id) => state.records.push(id),
            _ => {}
        }
    }

    /// Reads which of `tenant`'s consultations are scheduled, every [`POLL`], until `stop`.
    async fn poll(&self, tenant: usize, stop: CancellationToken) {
        let token = self.tenants[tenant]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .token
            .clone();
        let call = Call {
            method: Method::GET,
            path: "/consultations?status=scheduled&limit=200".to_owned(),
            body: None,
            token,
            key: None,
            correlation: format!("chaos-poll-{tenant}"),
        };
        loop {
            let sent = self.api.send(&call, POLL).await;
            let status = sent
                .answer
                .as_ref()
                .map_or("unanswered".to_owned(), |a| a.status.to_string());
            *self
                .ledger
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .queries
                .entry(status)
                .or_default() += 1;
            if let Some(answer) = sent.answer.filter(|a| a.status == 200) {
                let scheduled = answer.body["items"]
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .filter_map(|c| c["id"].as_str()?.parse().ok())
                            .collect()
                    })
                    .unwrap_or_default();
                self.tenants[tenant]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .scheduled = scheduled;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

/// Path, method and body of the deactivation of `person` (`kind` says patient or physician).
fn deactivation(kind: Kind, person: Uuid, n: u64) -> (String, Method, Option<serde_json::Value>) {
    let collection = if kind == Kind::DeactivatePatient {
        "patients"
    } else {
        "physicians"
    };
    (
        format!("/{collection}/{person}/deactivate"),
        Method::POST,
        Some(json!({ "reason": format!("leaves the clinic ({n})") })),
    )
}
