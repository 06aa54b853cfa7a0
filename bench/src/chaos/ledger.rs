//! What the clinic's client knows at the end: every command it sent by kind, how each ended,
//! and for every accepted one the id, version and event type the store must hold.

use std::collections::BTreeMap;

use domain::event;
use uuid::Uuid;

use super::client::Call;

/// The commands the workload sends, each with the event its acceptance appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    RegisterPatient,
    UpdatePatient,
    DeactivatePatient,
    RegisterPhysician,
    UpdatePhysician,
    DeactivatePhysician,
    RequestConsultation,
    UpdateConsultation,
    CancelConsultation,
    CreateRecord,
    UpdateRecord,
}

/// Where an accepted command's event is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// In the stream of the answered id (a patient's, physician's or consultation's).
    Own,
    /// In a record book, on an event whose payload's `recordId` is the answered id.
    RecordBook,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Self::RegisterPatient,
        Self::UpdatePatient,
        Self::DeactivatePatient,
        Self::RegisterPhysician,
        Self::UpdatePhysician,
        Self::DeactivatePhysician,
        Self::RequestConsultation,
        Self::UpdateConsultation,
        Self::CancelConsultation,
        Self::CreateRecord,
        Self::UpdateRecord,
    ];

    /// The route, as the report shows it.
    pub fn route(self) -> &'static str {
        match self {
            Self::RegisterPatient => "POST /patients",
            Self::UpdatePatient => "PATCH /patients/{id}",
            Self::DeactivatePatient => "POST /patients/{id}/deactivate",
            Self::RegisterPhysician => "POST /physicians",
            Self::UpdatePhysician => "PATCH /physicians/{id}",
            Self::DeactivatePhysician => "POST /physicians/{id}/deactivate",
            Self::RequestConsultation => "POST /consultations",
            Self::UpdateConsultation => "PATCH /consultations/{id}",
            Self::CancelConsultation => "POST /consultations/{id}/cancel",
            Self::CreateRecord => "POST /consultations/{id}/records",
            Self::UpdateRecord => "PATCH /records/{id}",
        }
    }

    /// The event type an accepted command of this kind appends (or, for a command that
    /// changed nothing, that its stream holds already).
    pub fn event_type(self) -> &'static str {
        match self {
            Self::RegisterPatient => event::PatientRegistered::EVENT_TYPE,
            Self::UpdatePatient => event::PatientUpdated::EVENT_TYPE,
            Self::DeactivatePatient => event::PatientDeactivated::EVENT_TYPE,
            Self::RegisterPhysician => event::PhysicianRegistered::EVENT_TYPE,
            Self::UpdatePhysician => event::PhysicianUpdated::EVENT_TYPE,
            Self::DeactivatePhysician => event::PhysicianDeactivated::EVENT_TYPE,
            Self::RequestConsultation => event::ConsultationSchedulingStarted::EVENT_TYPE,
            Self::UpdateConsultation => event::ConsultationUpdated::EVENT_TYPE,
            Self::CancelConsultation => event::ConsultationCancellationRequested::EVENT_TYPE,
            Self::CreateRecord => event::ConsultationRecordCreated::EVENT_TYPE,
            Self::UpdateRecord => event::ConsultationRecordUpdated::EVENT_TYPE,
        }
    }

    /// Whether the command always appends its event at the answered version: creations do.
    /// The others may change nothing (deactivating twice, cancelling again), and then answer
    /// the current version, where another event may stand; their event is then at or below it.
    pub fn creates(self) -> bool {
        matches!(
            self,
            Self::RegisterPatient
                | Self::RegisterPhysician
                | Self::RequestConsultation
                | Self::CreateRecord
        )
    }

    pub fn stream(self) -> Stream {
        match self {
            Self::CreateRecord | Self::UpdateRecord => Stream::RecordBook,
            _ => Stream::Own,
        }
    }
}

/// A command that got a 2xx.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub kind: Kind,
    pub tenant: String,
    pub id: Uuid,
    pub version: i64,
    pub correlation: String,
}

/// How the commands of one kind ended.
#[derive(Debug, Default, Clone)]
pub struct KindStats {
    pub requests: u64,
    pub accepted: u64,
    /// 4xx answers by status.
    pub refused: BTreeMap<u16, u64>,
    /// Requests that needed more than one attempt.
    pub retried: u64,
    /// Requests with no answer yet.
    pub unanswered: u64,
}

/// A command whose every attempt failed so far: sent again (same key) after the faults.
#[derive(Debug, Clone)]
pub struct Unanswered {
    pub kind: Kind,
    pub tenant: usize,
    pub call: Call,
}

/// Everything the client learned.
#[derive(Debug, Default)]
pub struct Ledger {
    pub accepted: Vec<Accepted>,
    pub by_kind: BTreeMap<Kind, KindStats>,
    pub unanswered: Vec<Unanswered>,
    /// Accepted commands sent once more with the same key, as a client that did not see the
    /// answer would; and those whose second answer differed from the first.
    pub replays: u64,
    pub replay_mismatches: Vec<String>,
    /// `GET /consultations?status=scheduled` polls, by status (`unanswered` for none).
    pub queries: BTreeMap<String, u64>,
}

impl Ledger {
    /// Counts one command's end: `status` of its answer, or `None` when it got none.
    pub fn count(&mut self, kind: Kind, status: Option<u16>, attempts: u32) {
        let stats = self.by_kind.entry(kind).or_default();
        stats.requests += 1;
        if attempts > 1 {
            stats.retried += 1;
        }
        match status {
            Some(status) if (200..300).contains(&status) => stats.accepted += 1,
            Some(status) => *stats.refused.entry(status).or_default() += 1,
            None => stats.unanswered += 1,
        }
    }

    /// Takes back the count of an unanswered command that is about to be sent again.
    pub fn uncount_unanswered(&mut self, kind: Kind) {
        let stats = self.by_kind.entry(kind).or_default();
        stats.requests -= 1;
        stats.unanswered -= 1;
    }
}
