//! A physician: registered once, updated while active, deactivated for good. The bookings of
//! a physician's days live in [`crate::schedule`], one stream per day, so that scheduling does
//! not contend with edits to the physician's profile.

use crate::aggregate::{Aggregate, DomainError};
use crate::event::{self, AggregateKind, Event};
use crate::ids::PhysicianId;
use crate::patient::changed;
use crate::values::{LicenseNumber, PersonName, Reason, Specialty};

#[derive(Debug, Clone, Default, PartialEq)]
pub enum Physician {
    #[default]
    Unregistered,
    Registered(PhysicianData),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PhysicianData {
    pub id: PhysicianId,
    /// None once erased (and, read back after the erasure, in every earlier state).
    pub name: Option<String>,
    pub specialty: String,
    pub license_number: Option<String>,
    pub active: bool,
    pub erased: bool,
}

#[derive(Debug, Clone)]
pub enum PhysicianCommand {
    Register {
        id: PhysicianId,
        name: PersonName,
        specialty: Specialty,
        license_number: LicenseNumber,
    },
    /// Fields left `None` are not changed.
    Update {
        name: Option<PersonName>,
        specialty: Option<Specialty>,
    },
    Deactivate {
        reason: Option<Reason>,
    },
    /// Erases the physician's personal data for good; erasing again changes nothing.
    Erase {
        reason: Reason,
    },
}

const WHAT: &str = "physician";

impl Physician {
    pub fn is_active(&self) -> bool {
        matches!(self, Self::Registered(p) if p.active)
    }
}

impl Aggregate for Physician {
    type Command = PhysicianCommand;
    const KIND: AggregateKind = AggregateKind::Physician;

    fn data_subject(&self) -> Option<uuid::Uuid> {
        match self {
            Self::Unregistered => None,
            Self::Registered(p) => Some(p.id.as_uuid()),
        }
    }

    fn decide(&self, command: PhysicianCommand) -> Result<Vec<Event>, DomainError> {
        match (self, command) {
            (
                Self::Unregistered,
                PhysicianCommand::Register {
                    id,
                    name,
                    specialty,
                    license_number,
                },
            ) => Ok(vec![Event::PhysicianRegistered(
                event::PhysicianRegistered {
                    physician_id: id,
                    name: Some(name.as_str().to_owned()),
                    specialty: specialty.as_str().to_owned(),
                    license_number: Some(license_number.as_str().to_owned()),
                },
            )]),
            (Self::Registered(_), PhysicianCommand::Register { .. }) => {
                Err(DomainError::AlreadyExists(WHAT))
            }
            (Self::Unregistered, _) => Err(DomainError::NotFound(WHAT)),
            (Self::Registered(p), PhysicianCommand::Erase { .. }) if p.erased => Ok(vec![]),
            (Self::Registered(p), PhysicianCommand::Erase { reason }) => {
                Ok(vec![Event::PhysicianErased(event::PhysicianErased {
                    physician_id: p.id,
                    reason: reason.as_str().to_owned(),
                })])
            }
            (Self::Registered(p), PhysicianCommand::Update { .. }) if p.erased => {
                Err(DomainError::Erased(WHAT))
            }
            (Self::Registered(p), PhysicianCommand::Update { .. }) if !p.active => {
                Err(DomainError::Deactivated(WHAT))
            }
            (Self::Registered(p), PhysicianCommand::Update { name, specialty }) => {
                let update = event::PhysicianUpdated {
                    physician_id: p.id,
                    name: changed(name, p.name.as_deref()),
                    specialty: changed(specialty, Some(&p.specialty)),
                };
                if update.name.is_none() && update.specialty.is_none() {
                    return Ok(vec![]);
                }
                Ok(vec![Event::PhysicianUpdated(update)])
            }
            (Self::Registered(p), PhysicianCommand::Deactivate { .. }) if !p.active => Ok(vec![]),
            (Self::Registered(p), PhysicianCommand::Deactivate { reason }) => {
                Ok(vec![Event::PhysicianDeactivated(
                    event::PhysicianDeactivated {
                        physician_id: p.id,
                        reason: reason.map(|r| r.as_str().to_owned()),
                    },
                )])
            }
        }
    }

    fn evolve(self, event: &Event) -> Self {
        match (self, event) {
            (Self::Unregistered, Event::PhysicianRegistered(e)) => {
                Self::Registered(PhysicianData {
                    id: e.physician_id,
                    name: e.name.clone(),
                    specialty: e.specialty.clone(),
                    license_number: e.license_number.clone(),
                    active: true,
                    erased: false,
                })
            }
            (Self::Registered(mut p), Event::PhysicianUpdated(e)) => {
                if let Some(name) = &e.name {
                    p.name = Some(name.clone());
                }
                if let Some(specialty) = &e.specialty {
                    p.specialty = specialty.clone();
                }
                Self::Registered(p)
            }
            (Self::Registered(mut p), Event::PhysicianDeactivated(_)) => {
                p.active = false;
                Self::Registered(p)
            }
            // An erased physician is inactive too: nothing can be scheduled with them any more.
            (Self::Registered(mut p), Event::PhysicianErased(_)) => {
                p.name = None;
                p.license_number = None;
                p.active = false;
                p.erased = true;
                Self::Registered(p)
            }
            (state, _) => state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::given;

    fn register() -> PhysicianCommand {
        PhysicianCommand::Register {
            id: PhysicianId::new(),
            name: PersonName::parse("Dr. Rui Costa").unwrap(),
            specialty: Specialty::parse("cardiology").unwrap(),
            license_number: LicenseNumber::parse("CRM-12345").unwrap(),
        }
    }

    fn rename(name: &str) -> PhysicianCommand {
        PhysicianCommand::Update {
            name: Some(PersonName::parse(name).unwrap()),
            specialty: None,
        }
    }

    #[test]
    fn registering_records_the_license() {
        let events = Physician::default().decide(register()).unwrap();
        assert!(matches!(
            events.as_slice(),
            [Event::PhysicianRegistered(e)] if e.license_number.as_deref() == Some("CRM-12345")
        ));
    }

    #[test]
    fn a_physician_cannot_be_registered_twice() {
        let physician: Physician = given([register()]);
        assert_eq!(
            physician.decide(register()),
            Err(DomainError::AlreadyExists("physician"))
        );
    }

    #[test]
    fn an_update_records_only_what_changed() {
        let physician: Physician = given([register()]);
        let events = physician
            .decide(PhysicianCommand::Update {
                name: Some(PersonName::parse("Dr. Rui Costa").unwrap()),
                specialty: Some(Specialty::parse("neurology").unwrap()),
            })
            .unwrap();
        assert!(matches!(
            events.as_slice(),
            [Event::PhysicianUpdated(e)] if e.name.is_none() && e.specialty.as_deref() == Some("neurology")
        ));
        assert_eq!(physician.decide(rename("Dr. Rui Costa")), Ok(vec![]));
    }

    #[test]
    fn an_unknown_physician_cannot_be_changed() {
        assert_eq!(
            Physician::default().decide(rename("X")),
            Err(DomainError::NotFound("physician"))
        );
    }

    #[test]
    fn a_deactivated_physician_cannot_be_changed_and_deactivates_once() {
        let physician: Physician =
            given([register(), PhysicianCommand::Deactivate { reason: None }]);
        assert!(!physician.is_active());
        assert_eq!(
            physician.decide(rename("Other")),
            Err(DomainError::Deactivated("physician"))
        );
        assert_eq!(
            physician.decide(PhysicianCommand::Deactivate { reason: None }),
            Ok(vec![])
        );
    }

    #[test]
    fn erasing_forgets_the_name_and_license_once_and_ends_every_change() {
        let physician: Physician = given(vec![register()]);
        let erase = || PhysicianCommand::Erase {
            reason: Reason::parse("the physician asked").unwrap(),
        };
        let events = physician.decide(erase()).unwrap();
        assert!(matches!(events.as_slice(), [Event::PhysicianErased(_)]));
        let erased = events.iter().fold(physician, Physician::evolve);
        let Physician::Registered(data) = &erased else {
            panic!("{erased:?}")
        };
        assert_eq!(
            (data.name.as_ref(), data.license_number.as_ref()),
            (None, None)
        );
        assert!(data.erased && !erased.is_active());
        assert_eq!(erased.decide(erase()), Ok(vec![]));
        assert_eq!(
            erased.decide(rename("X")),
            Err(DomainError::Erased("physician"))
        );
    }
}
