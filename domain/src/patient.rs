//! A patient: registered once, updated while active, deactivated for good.

use crate::aggregate::{Aggregate, DomainError};
use crate::event::{self, AggregateKind, Event};
use crate::ids::{ConsultationId, PatientId};
use crate::values::{BirthDate, DocumentNumber, Email, PersonName, Phone, Reason};

#[derive(Debug, Clone, Default, PartialEq)]
pub enum Patient {
    #[default]
    Unregistered,
    Registered(PatientData),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PatientData {
    pub id: PatientId,
    /// None once erased (and, read back after the erasure, in every earlier state).
    pub name: Option<String>,
    pub document_number: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub active: bool,
    pub erased: bool,
}

#[derive(Debug, Clone)]
pub enum PatientCommand {
    Register {
        id: PatientId,
        name: PersonName,
        birth_date: BirthDate,
        document_number: DocumentNumber,
        email: Option<Email>,
        phone: Option<Phone>,
    },
    /// Fields left `None` are not changed.
    Update {
        name: Option<PersonName>,
        email: Option<Email>,
        phone: Option<Phone>,
    },
    Deactivate {
        reason: Option<Reason>,
    },
    /// Erases the patient's personal data for good (their right to erasure); erasing again
    /// changes nothing.
    Erase {
        reason: Reason,
    },
    /// The scheduling saga asks whether this patient may have a consultation.
    ValidateForConsultation {
        consultation_id: ConsultationId,
    },
}

const WHAT: &str = "patient";

impl Patient {
    fn active(&self) -> Result<&PatientData, DomainError> {
        match self {
            Self::Unregistered => Err(DomainError::NotFound(WHAT)),
            Self::Registered(p) if p.erased => Err(DomainError::Erased(WHAT)),
            Self::Registered(p) if !p.active => Err(DomainError::Deactivated(WHAT)),
            Self::Registered(p) => Ok(p),
        }
    }
}

/// `Some(new)` when `new` is given and differs from `current`.
pub(crate) fn changed<T: AsRef<str>>(new: Option<T>, current: Option<&str>) -> Option<String> {
    new.map(|v| v.as_ref().to_owned())
        .filter(|v| Some(v.as_str()) != current)
}

impl Aggregate for Patient {
    type Command = PatientCommand;
    const KIND: AggregateKind = AggregateKind::Patient;

    fn data_subject(&self) -> Option<uuid::Uuid> {
        match self {
            Self::Unregistered => None,
            Self::Registered(p) => Some(p.id.as_uuid()),
        }
    }

    fn decide(&self, command: PatientCommand) -> Result<Vec<Event>, DomainError> {
        match command {
            PatientCommand::Register {
                id,
                name,
                birth_date,
                document_number,
                email,
                phone,
            } => {
                if let Self::Registered(_) = self {
                    return Err(DomainError::AlreadyExists(WHAT));
                }
                Ok(vec![Event::PatientRegistered(event::PatientRegistered {
                    patient_id: id,
                    name: Some(name.as_str().to_owned()),
                    birth_date: Some(birth_date.date()),
                    document_number: Some(document_number.as_str().to_owned()),
                    email: email.map(|e| e.as_str().to_owned()),
                    phone: phone.map(|p| p.as_str().to_owned()),
                })])
            }
            PatientCommand::Update { name, email, phone } => {
                let patient = self.active()?;
                let update = event::PatientUpdated {
                    patient_id: patient.id,
                    name: changed(name, patient.name.as_deref()),
                    email: changed(email.as_ref().map(Email::as_str), patient.email.as_deref()),
                    phone: changed(phone.as_ref().map(Phone::as_str), patient.phone.as_deref()),
                };
                if update.name.is_none() && update.email.is_none() && update.phone.is_none() {
                    return Ok(vec![]);
                }
                Ok(vec![Event::PatientUpdated(update)])
            }
            PatientCommand::Deactivate { reason } => match self {
                Self::Unregistered => Err(DomainError::NotFound(WHAT)),
                Self::Registered(p) if !p.active => Ok(vec![]),
                Self::Registered(p) => {
                    Ok(vec![Event::PatientDeactivated(event::PatientDeactivated {
                        patient_id: p.id,
                        reason: reason.map(|r| r.as_str().to_owned()),
                    })])
                }
            },
            PatientCommand::Erase { reason } => match self {
                Self::Unregistered => Err(DomainError::NotFound(WHAT)),
                Self::Registered(p) if p.erased => Ok(vec![]),
                Self::Registered(p) => Ok(vec![Event::PatientErased(event::PatientErased {
                    patient_id: p.id,
                    reason: reason.as_str().to_owned(),
                })]),
            },
            PatientCommand::ValidateForConsultation { consultation_id } => match self {
                Self::Unregistered => Err(DomainError::NotFound(WHAT)),
                Self::Registered(p) if !p.active => Ok(vec![Event::PatientValidationFailed(
                    event::PatientValidationFailed {
                        patient_id: p.id,
                        consultation_id,
                        reason: if p.erased {
                            "patient is erased"
                        } else {
                            "patient is deactivated"
                        }
                        .into(),
                    },
                )]),
                Self::Registered(p) => Ok(vec![Event::PatientValidatedForConsultation(
                    event::PatientValidatedForConsultation {
                        patient_id: p.id,
                        consultation_id,
                    },
                )]),
            },
        }
    }

    fn evolve(self, event: &Event) -> Self {
        match (self, event) {
            (Self::Unregistered, Event::PatientRegistered(e)) => Self::Registered(PatientData {
                id: e.patient_id,
                name: e.name.clone(),
                document_number: e.document_number.clone(),
                email: e.email.clone(),
                phone: e.phone.clone(),
                active: true,
                erased: false,
            }),
            (Self::Registered(mut p), Event::PatientUpdated(e)) => {
                if let Some(name) = &e.name {
                    p.name = Some(name.clone());
                }
                if let Some(email) = &e.email {
                    p.email = Some(email.clone());
                }
                if let Some(phone) = &e.phone {
                    p.phone = Some(phone.clone());
                }
                Self::Registered(p)
            }
            (Self::Registered(mut p), Event::PatientDeactivated(_)) => {
                p.active = false;
                Self::Registered(p)
            }
            // An erased patient is inactive too: nothing can be scheduled for them any more.
            (Self::Registered(p), Event::PatientErased(_)) => Self::Registered(PatientData {
                id: p.id,
                name: None,
                document_number: None,
                email: None,
                phone: None,
                active: false,
                erased: true,
            }),
            (state, _) => state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn register(id: PatientId) -> PatientCommand {
        let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        PatientCommand::Register {
            id,
            name: PersonName::parse("Ana Lima").unwrap(),
            birth_date: BirthDate::parse(NaiveDate::from_ymd_opt(1990, 5, 1).unwrap(), today)
                .unwrap(),
            document_number: DocumentNumber::parse("123.456.789-00").unwrap(),
            email: Some(Email::parse("ana@example.org").unwrap()),
            phone: None,
        }
    }

    fn given(commands: Vec<PatientCommand>) -> Patient {
        crate::aggregate::given(commands)
    }

    fn update_name(name: &str) -> PatientCommand {
        PatientCommand::Update {
            name: Some(PersonName::parse(name).unwrap()),
            email: None,
            phone: None,
        }
    }

    #[test]
    fn registering_records_every_given_field() {
        let id = PatientId::new();
        let events = Patient::default().decide(register(id)).unwrap();
        let [Event::PatientRegistered(e)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(e.patient_id, id);
        assert_eq!(e.document_number.as_deref(), Some("123.456.789-00"));
        assert_eq!(e.email.as_deref(), Some("ana@example.org"));
    }

    #[test]
    fn a_patient_cannot_be_registered_twice() {
        let id = PatientId::new();
        let patient = given(vec![register(id)]);
        assert_eq!(
            patient.decide(register(id)),
            Err(DomainError::AlreadyExists("patient"))
        );
    }

    #[test]
    fn an_update_records_only_what_changed() {
        let patient = given(vec![register(PatientId::new())]);
        let events = patient
            .decide(PatientCommand::Update {
                name: Some(PersonName::parse("Ana Souza").unwrap()),
                email: Some(Email::parse("ana@example.org").unwrap()),
                phone: Some(Phone::parse("+55 11 91234-5678").unwrap()),
            })
            .unwrap();
        let [Event::PatientUpdated(e)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(e.name.as_deref(), Some("Ana Souza"));
        assert_eq!(e.email, None, "the e-mail did not change");
        assert_eq!(e.phone.as_deref(), Some("+55 11 91234-5678"));
    }

    #[test]
    fn an_update_that_changes_nothing_appends_nothing() {
        let patient = given(vec![register(PatientId::new())]);
        assert_eq!(patient.decide(update_name("Ana Lima")), Ok(vec![]));
    }

    #[test]
    fn an_unknown_patient_cannot_be_changed() {
        let patient = Patient::default();
        assert_eq!(
            patient.decide(update_name("X")),
            Err(DomainError::NotFound("patient"))
        );
        assert_eq!(
            patient.decide(PatientCommand::Deactivate { reason: None }),
            Err(DomainError::NotFound("patient"))
        );
    }

    #[test]
    fn a_deactivated_patient_cannot_be_changed() {
        let patient = given(vec![
            register(PatientId::new()),
            PatientCommand::Deactivate { reason: None },
        ]);
        assert_eq!(
            patient.decide(update_name("Other")),
            Err(DomainError::Deactivated("patient"))
        );
    }

    #[test]
    fn deactivating_twice_appends_nothing_the_second_time() {
        let patient = given(vec![
            register(PatientId::new()),
            PatientCommand::Deactivate {
                reason: Some(Reason::parse("moved away").unwrap()),
            },
        ]);
        assert_eq!(
            patient.decide(PatientCommand::Deactivate { reason: None }),
            Ok(vec![])
        );
    }

    #[test]
    fn only_an_active_patient_is_valid_for_a_consultation() {
        let consultation_id = ConsultationId::new();
        let validate = || PatientCommand::ValidateForConsultation { consultation_id };
        let active = given(vec![register(PatientId::new())]);
        assert!(matches!(
            active.decide(validate()).unwrap().as_slice(),
            [Event::PatientValidatedForConsultation(_)]
        ));
        let inactive = given(vec![
            register(PatientId::new()),
            PatientCommand::Deactivate { reason: None },
        ]);
        assert!(matches!(
            inactive.decide(validate()).unwrap().as_slice(),
            [Event::PatientValidationFailed(_)]
        ));
    }

    fn erase() -> PatientCommand {
        PatientCommand::Erase {
            reason: Reason::parse("the patient asked (LGPD art. 18)").unwrap(),
        }
    }

    #[test]
    fn erasing_forgets_every_personal_field_once_and_ends_every_change() {
        let id = PatientId::new();
        let patient = given(vec![register(id)]);
        let events = patient.decide(erase()).unwrap();
        assert!(matches!(events.as_slice(), [Event::PatientErased(e)] if e.patient_id == id));
        let erased = events.iter().fold(patient, Patient::evolve);
        let Patient::Registered(data) = &erased else {
            panic!("{erased:?}")
        };
        assert_eq!(
            (data.name.as_ref(), data.document_number.as_ref()),
            (None, None)
        );
        assert_eq!((data.email.as_ref(), data.phone.as_ref()), (None, None));
        assert!(data.erased && !data.active);
        assert_eq!(
            erased.decide(erase()),
            Ok(vec![]),
            "erasing again changes nothing"
        );
        assert_eq!(
            erased.decide(update_name("Ana")),
            Err(DomainError::Erased("patient"))
        );
        assert!(matches!(
            erased.decide(PatientCommand::ValidateForConsultation {
                consultation_id: ConsultationId::new()
            }).unwrap().as_slice(),
            [Event::PatientValidationFailed(e)] if e.reason == "patient is erased"
        ));
        assert_eq!(
            Patient::default().decide(erase()),
            Err(DomainError::NotFound("patient"))
        );
    }
}
