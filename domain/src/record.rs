//! The clinical record book of one consultation: the records written about it, and whether the
//! cancellation saga voided them. One stream per consultation keeps "add a record" and "void
//! every record" on the same consistency boundary, so no record can slip in after the voiding.

use crate::aggregate::{Aggregate, DomainError};
use crate::consultation::Status;
use crate::event::{self, AggregateKind, Event};
use crate::ids::{ConsultationId, PatientId, PhysicianId, RecordId};
use crate::values::RecordContent;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordBook {
    /// Known once the first record is written.
    pub consultation_id: Option<ConsultationId>,
    /// Whose records these are (their content is sealed under the patient's key); known once
    /// the first record is written.
    pub patient_id: Option<PatientId>,
    pub records: Vec<Record>,
    pub voided: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: RecordId,
    /// None once the patient is erased.
    pub content: Option<String>,
}

/// What the book needs to know of its consultation, read from the consultation's stream.
#[derive(Debug, Clone, Copy)]
pub struct ConsultationFacts {
    pub id: ConsultationId,
    pub status: Status,
    pub patient_id: PatientId,
    pub physician_id: PhysicianId,
}

#[derive(Debug, Clone)]
pub enum RecordCommand {
    Create {
        id: RecordId,
        consultation: ConsultationFacts,
        content: RecordContent,
    },
    Update {
        id: RecordId,
        consultation_id: ConsultationId,
        content: RecordContent,
    },
    /// Cancellation saga: void every record of the consultation.
    VoidAll { consultation_id: ConsultationId },
}

/// Namespace for the record-book stream ids (UUIDv5 of the consultation id), so that a book's
/// stream differs from its consultation's and can be computed rather than looked up.
const BOOK_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6861_7000_0000_4000_8000_7265_636f_7264);

impl RecordBook {
    /// The stream id of `consultation`'s record book.
    pub fn stream_id(consultation: ConsultationId) -> uuid::Uuid {
        uuid::Uuid::new_v5(&BOOK_NAMESPACE, consultation.as_uuid().as_bytes())
    }

    pub fn record(&self, id: RecordId) -> Option<&Record> {
        self.records.iter().find(|r| r.id == id)
    }
}

impl Aggregate for RecordBook {
    type Command = RecordCommand;
    const KIND: AggregateKind = AggregateKind::ClinicalRecord;

    fn data_subject(&self) -> Option<uuid::Uuid> {
        self.patient_id.map(|p| p.as_uuid())
    }

    fn decide(&self, command: RecordCommand) -> Result<Vec<Event>, DomainError> {
        match command {
            RecordCommand::Create {
                id,
                consultation,
                content,
            } => {
                if !matches!(consultation.status, Status::Scheduled | Status::Done) || self.voided {
                    return Err(DomainError::RecordsNotAllowed(consultation.status.as_str()));
                }
                if self.record(id).is_some() {
                    return Err(DomainError::AlreadyExists("record"));
                }
                Ok(vec![Event::ConsultationRecordCreated(
                    event::ConsultationRecordCreated {
                        record_id: id,
                        consultation_id: consultation.id,
                        patient_id: consultation.patient_id,
                        physician_id: consultation.physician_id,
                        content: Some(content.as_str().to_owned()),
                    },
                )])
            }
            RecordCommand::Update {
                id,
                consultation_id,
                content,
            } => {
                let record = self.record(id).ok_or(DomainError::NotFound("record"))?;
                if self.voided {
                    return Err(DomainError::RecordVoided);
                }
                if record.content.as_deref() == Some(content.as_str()) {
                    return Ok(vec![]);
                }
                Ok(vec![Event::ConsultationRecordUpdated(
                    event::ConsultationRecordUpdated {
                        record_id: id,
                        consultation_id,
                        content: Some(content.as_str().to_owned()),
                    },
                )])
            }
            RecordCommand::VoidAll { consultation_id } => {
                if self.voided {
                    return Ok(vec![]);
                }
                Ok(vec![Event::ConsultationRecordsVoided(
                    event::ConsultationRecordsVoided {
                        consultation_id,
                        record_ids: self.records.iter().map(|r| r.id).collect(),
                    },
                )])
            }
        }
    }

    fn evolve(mut self, event: &Event) -> Self {
        match event {
            Event::ConsultationRecordCreated(e) => {
                self.consultation_id = Some(e.consultation_id);
                self.patient_id = Some(e.patient_id);
                self.records.push(Record {
                    id: e.record_id,
                    content: e.content.clone(),
                });
            }
            Event::ConsultationRecordUpdated(e) => {
                if let Some(r) = self.records.iter_mut().find(|r| r.id == e.record_id) {
                    r.content = e.content.clone();
                }
            }
            Event::ConsultationRecordsVoided(e) => {
                self.consultation_id = Some(e.consultation_id);
                self.voided = true;
            }
            _ => {}
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::given;

    fn facts(status: Status) -> ConsultationFacts {
        ConsultationFacts {
            id: ConsultationId::new(),
            status,
            patient_id: PatientId::new(),
            physician_id: PhysicianId::new(),
        }
    }

    fn create(id: RecordId, consultation: ConsultationFacts) -> RecordCommand {
        RecordCommand::Create {
            id,
            consultation,
            content: RecordContent::parse("blood pressure 12/8").unwrap(),
        }
    }

    fn update(id: RecordId, consultation: ConsultationFacts, content: &str) -> RecordCommand {
        RecordCommand::Update {
            id,
            consultation_id: consultation.id,
            content: RecordContent::parse(content).unwrap(),
        }
    }

    #[test]
    fn records_are_added_to_scheduled_or_done_consultations_only() {
        for status in [Status::Scheduled, Status::Done] {
            assert!(
                RecordBook::default()
                    .decide(create(RecordId::new(), facts(status)))
                    .is_ok()
            );
        }
        for status in [
            Status::Requested,
            Status::Failed,
            Status::CancellationRequested,
            Status::Cancelled,
        ] {
            assert_eq!(
                RecordBook::default().decide(create(RecordId::new(), facts(status))),
                Err(DomainError::RecordsNotAllowed(status.as_str()))
            );
        }
    }

    #[test]
    fn a_record_can_be_updated_until_voided() {
        let consultation = facts(Status::Scheduled);
        let id = RecordId::new();
        let book: RecordBook = given([create(id, consultation)]);
        assert!(matches!(
            book.decide(update(id, consultation, "revised"))
                .unwrap()
                .as_slice(),
            [Event::ConsultationRecordUpdated(_)]
        ));
        let voided: RecordBook = given([
            create(id, consultation),
            RecordCommand::VoidAll {
                consultation_id: consultation.id,
            },
        ]);
        assert_eq!(
            voided.decide(update(id, consultation, "revised")),
            Err(DomainError::RecordVoided)
        );
        assert!(
            voided
                .decide(create(RecordId::new(), consultation))
                .is_err()
        );
    }

    #[test]
    fn the_same_content_again_appends_nothing() {
        let consultation = facts(Status::Done);
        let id = RecordId::new();
        let book: RecordBook = given([create(id, consultation)]);
        assert_eq!(
            book.decide(update(id, consultation, "blood pressure 12/8")),
            Ok(vec![])
        );
    }

    #[test]
    fn an_unknown_record_is_not_found() {
        let consultation = facts(Status::Done);
        assert_eq!(
            RecordBook::default().decide(update(RecordId::new(), consultation, "x")),
            Err(DomainError::NotFound("record"))
        );
    }

    #[test]
    fn voiding_lists_every_record_and_happens_once_even_when_empty() {
        let consultation = facts(Status::Scheduled);
        let (a, b) = (RecordId::new(), RecordId::new());
        let book: RecordBook = given([create(a, consultation), create(b, consultation)]);
        let void = RecordCommand::VoidAll {
            consultation_id: consultation.id,
        };
        let events = book.decide(void.clone()).unwrap();
        assert!(matches!(
            events.as_slice(),
            [Event::ConsultationRecordsVoided(e)] if e.record_ids == vec![a, b]
        ));
        assert!(matches!(
            RecordBook::default().decide(void.clone()).unwrap().as_slice(),
            [Event::ConsultationRecordsVoided(e)] if e.record_ids.is_empty()
        ));
        let voided: RecordBook = given([void.clone()]);
        assert_eq!(voided.decide(void), Ok(vec![]));
    }
}
