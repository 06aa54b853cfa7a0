//! One physician's bookings on one calendar day (UTC). Holding a slot here is how the
//! scheduling saga makes sure two consultations never overlap for the same physician: both
//! holds land on the same small stream, and the optimistic version check lets only one win.

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use crate::aggregate::{Aggregate, DomainError};
use crate::event::{self, AggregateKind, Event};
use crate::ids::{ConsultationId, PhysicianId};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DaySchedule {
    pub slots: Vec<Slot>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub consultation_id: ConsultationId,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub enum ScheduleCommand {
    /// Hold `[starts_at, ends_at)` for a consultation. `physician_active` is read from the
    /// physician's own stream before deciding.
    Hold {
        physician_id: PhysicianId,
        physician_active: bool,
        consultation_id: ConsultationId,
        starts_at: DateTime<Utc>,
        ends_at: DateTime<Utc>,
    },
    Release {
        physician_id: PhysicianId,
        consultation_id: ConsultationId,
    },
}

/// Namespace for the day-schedule stream ids (UUIDv5), so that the id of a physician's day can
/// be computed rather than looked up.
const SCHEDULE_NAMESPACE: Uuid = Uuid::from_u128(0x6861_7000_0000_4000_8000_7363_6865_6475);

impl DaySchedule {
    /// The stream id of `physician`'s schedule on `day`.
    pub fn stream_id(physician: PhysicianId, day: NaiveDate) -> Uuid {
        let name = format!("{physician}/{day}");
        Uuid::new_v5(&SCHEDULE_NAMESPACE, name.as_bytes())
    }

    fn slot_of(&self, consultation_id: ConsultationId) -> Option<&Slot> {
        self.slots
            .iter()
            .find(|s| s.consultation_id == consultation_id)
    }
}

impl Aggregate for DaySchedule {
    type Command = ScheduleCommand;
    const KIND: AggregateKind = AggregateKind::PhysicianSchedule;

    fn decide(&self, command: ScheduleCommand) -> Result<Vec<Event>, DomainError> {
        match command {
            ScheduleCommand::Hold {
                physician_id,
                physician_active,
                consultation_id,
                starts_at,
                ends_at,
            } => {
                if self.slot_of(consultation_id).is_some() {
                    return Ok(vec![]);
                }
                let rejection = if !physician_active {
                    Some("the physician is not active".to_owned())
                } else {
                    self.slots
                        .iter()
                        .find(|s| s.starts_at < ends_at && starts_at < s.ends_at)
                        .map(|s| {
                            format!(
                                "the physician is booked from {} to {}",
                                s.starts_at.to_rfc3339(),
                                s.ends_at.to_rfc3339()
                            )
                        })
                };
                Ok(vec![match rejection {
                    Some(reason) => {
                        Event::PhysicianAvailabilityRejected(event::PhysicianAvailabilityRejected {
                            physician_id,
                            consultation_id,
                            reason,
                        })
                    }
                    None => Event::PhysicianAvailabilityConfirmed(
                        event::PhysicianAvailabilityConfirmed {
                            physician_id,
                            consultation_id,
                            starts_at,
                            ends_at,
                        },
                    ),
                }])
            }
            ScheduleCommand::Release {
                physician_id,
                consultation_id,
            } => Ok(self
                .slot_of(consultation_id)
                .map(|slot| {
                    Event::PhysicianSlotReleased(event::PhysicianSlotReleased {
                        physician_id,
                        consultation_id,
                        starts_at: slot.starts_at,
                    })
                })
                .into_iter()
                .collect()),
        }
    }

    fn evolve(mut self, event: &Event) -> Self {
        match event {
            Event::PhysicianAvailabilityConfirmed(e) => self.slots.push(Slot {
                consultation_id: e.consultation_id,
                starts_at: e.starts_at,
                ends_at: e.ends_at,
            }),
            Event::PhysicianSlotReleased(e) => self
                .slots
                .retain(|s| s.consultation_id != e.consultation_id),
            _ => {}
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::given;
    use chrono::TimeZone;

    fn at(hour: u32, minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 1, 7, hour, minute, 0).unwrap()
    }

    fn hold(
        physician_id: PhysicianId,
        consultation_id: ConsultationId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> ScheduleCommand {
        ScheduleCommand::Hold {
            physician_id,
            physician_active: true,
            consultation_id,
            starts_at: from,
            ends_at: to,
        }
    }

    /// The types of the events `schedule` decides on `command`.
    fn decided(schedule: &DaySchedule, command: ScheduleCommand) -> Vec<&'static str> {
        let events = schedule.decide(command).unwrap();
        events.iter().map(Event::event_type).collect()
    }

    #[test]
    fn a_free_slot_is_confirmed_and_an_overlapping_one_rejected() {
        let physician = PhysicianId::new();
        let schedule: DaySchedule =
            given([hold(physician, ConsultationId::new(), at(9, 0), at(9, 30))]);
        let overlapping = hold(physician, ConsultationId::new(), at(9, 15), at(9, 45));
        assert_eq!(
            decided(&schedule, overlapping),
            ["PhysicianAvailabilityRejected"]
        );
        let adjacent = hold(physician, ConsultationId::new(), at(9, 30), at(10, 0));
        assert_eq!(
            decided(&schedule, adjacent),
            ["PhysicianAvailabilityConfirmed"]
        );
    }

    #[test]
    fn an_inactive_physician_has_no_availability() {
        let command = ScheduleCommand::Hold {
            physician_id: PhysicianId::new(),
            physician_active: false,
            consultation_id: ConsultationId::new(),
            starts_at: at(9, 0),
            ends_at: at(9, 30),
        };
        assert_eq!(
            decided(&DaySchedule::default(), command),
            ["PhysicianAvailabilityRejected"]
        );
    }

    #[test]
    fn holding_and_releasing_are_idempotent() {
        let physician = PhysicianId::new();
        let consultation = ConsultationId::new();
        let schedule: DaySchedule = given([hold(physician, consultation, at(9, 0), at(9, 30))]);
        assert_eq!(
            schedule.decide(hold(physician, consultation, at(9, 0), at(9, 30))),
            Ok(vec![])
        );
        let release = || ScheduleCommand::Release {
            physician_id: physician,
            consultation_id: consultation,
        };
        let released: DaySchedule = given([
            hold(physician, consultation, at(9, 0), at(9, 30)),
            release(),
        ]);
        assert!(released.slots.is_empty());
        assert_eq!(released.decide(release()), Ok(vec![]));
    }

    #[test]
    fn each_physician_day_has_its_own_stream() {
        let physician = PhysicianId::new();
        let monday = NaiveDate::from_ymd_opt(2030, 1, 7).unwrap();
        let tuesday = monday.succ_opt().unwrap();
        assert_eq!(
            DaySchedule::stream_id(physician, monday),
            DaySchedule::stream_id(physician, monday)
        );
        assert_ne!(
            DaySchedule::stream_id(physician, monday),
            DaySchedule::stream_id(physician, tuesday)
        );
    }
}
