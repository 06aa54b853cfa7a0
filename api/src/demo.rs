//! `hap demo`: fills a system with realistic sample data through the command pipeline (the
//! same one the HTTP handlers and the sagas use), prints what it did, and waits for the
//! consultations it requested to be scheduled by the sagas of a running `hap serve`.

use std::time::Duration;

use anyhow::Context;
use chrono::{Timelike, Utc};
use commands::{CommandMeta, Outcome, Pipeline, Target};
use domain::Aggregate;
use domain::consultation::{Consultation, ConsultationCommand, Status};
use domain::ids::{ConsultationId, PatientId, PhysicianId};
use domain::patient::{Patient, PatientCommand};
use domain::physician::{Physician, PhysicianCommand};
use domain::values::{
    BirthDate, DocumentNumber, DurationMinutes, Email, LicenseNumber, PersonName, Phone, Reason,
    Specialty, StartsAt,
};
use uuid::Uuid;

const PHYSICIANS: [(&str, &str); 4] = [
    ("Dra. Helena Prado", "cardiology"),
    ("Dr. Tomás Ribeiro", "dermatology"),
    ("Dra. Sofia Almeida", "pediatrics"),
    ("Dr. Rui Carvalho", "orthopedics"),
];

const PATIENTS: [(&str, &str); 10] = [
    ("Ana Beatriz Lima", "1987-03-14"),
    ("Bruno Costa", "1992-11-02"),
    ("Carla Mendes", "1979-06-21"),
    ("Diego Fernandes", "2001-01-30"),
    ("Eduarda Rocha", "1995-08-09"),
    ("Felipe Nunes", "1968-12-17"),
    ("Gabriela Souza", "2015-04-05"),
    ("Henrique Dias", "1983-09-26"),
    ("Isabela Martins", "1990-02-11"),
    ("João Pedro Alves", "1975-07-19"),
];

/// The demo's way into one tenant: every command goes through the pipeline as `hap-demo`.
struct Demo<'a> {
    pipeline: &'a Pipeline,
    tenant: &'a str,
}

impl Demo<'_> {
    /// Runs one command through the pipeline, on behalf of the demo.
    async fn run<A>(&self, target: Target, command: A::Command) -> anyhow::Result<()>
    where
        A: Aggregate,
        A::Command: Clone,
    {
        let meta = CommandMeta {
            actor_id: Some("hap-demo".to_owned()),
            ..CommandMeta::new(self.tenant, "hap-demo")
        };
        let outcome = self
            .pipeline
            .execute::<A>(&meta, target, command)
            .await
            .with_context(|| format!("a {} command was refused", A::KIND.as_str()))?;
        anyhow::ensure!(matches!(outcome, Outcome::Done(_)), "nothing to replay");
        Ok(())
    }
}

/// Registers physicians and patients, updates some, requests consultations and deactivates a
/// patient; then waits up to `settle` for the sagas to decide every consultation.
pub async fn run_demo(pipeline: &Pipeline, tenant: &str, settle: Duration) -> anyhow::Result<()> {
    // Document and license numbers are unique: a suffix lets the demo run more than once.
    let run_id = &Uuid::now_v7().simple().to_string()[20..];
    let demo = Demo { pipeline, tenant };
    let mut physicians = vec![];
    for (n, (name, specialty)) in PHYSICIANS.iter().enumerate() {
        let id = PhysicianId::new();
        let command = PhysicianCommand::Register {
            id,
            name: PersonName::parse(name)?,
            specialty: Specialty::parse(specialty)?,
            license_number: LicenseNumber::parse(&format!("CRM-{run_id}-{n}"))?,
        };
        demo.run::<Physician>(Target::New(id.as_uuid()), command)
            .await?;
        physicians.push(id);
        println!("registered physician {name} ({specialty})");
    }
    let today = Utc::now().date_naive();
    let mut patients = vec![];
    for (n, (name, birth)) in PATIENTS.iter().enumerate() {
        let email = format!(
            "{}@example.org",
            name.split(' ').next().unwrap_or("patient").to_lowercase()
        );
        let id = PatientId::new();
        let command = PatientCommand::Register {
            id,
            name: PersonName::parse(name)?,
            birth_date: BirthDate::parse(birth.parse()?, today)?,
            document_number: DocumentNumber::parse(&format!("DOC-{run_id}-{n}"))?,
            email: Some(Email::parse(&email)?),
            phone: None,
        };
        demo.run::<Patient>(Target::New(id.as_uuid()), command)
            .await?;
        patients.push(id);
        println!("registered patient {name}");
    }
    let update = PatientCommand::Update {
        name: None,
        email: None,
        phone: Some(Phone::parse("+55 11 98765-4321")?),
    };
    demo.run::<Patient>(Target::Existing(patients[1].as_uuid()), update)
        .await?;
    println!("updated the phone of {}", PATIENTS[1].0);
    let update = PhysicianCommand::Update {
        name: None,
        specialty: Some(Specialty::parse("sports medicine")?),
    };
    demo.run::<Physician>(Target::Existing(physicians[3].as_uuid()), update)
        .await?;
    println!("updated the specialty of {}", PHYSICIANS[3].0);

    let now = Utc::now();
    let tomorrow = (now + chrono::Duration::days(1))
        .with_hour(9)
        .and_then(|t| t.with_minute(0))
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .context("a valid time")?;
    let mut consultations = vec![];
    for (n, patient) in patients.iter().enumerate() {
        let physician = physicians[n % physicians.len()];
        let starts_at = tomorrow + chrono::Duration::minutes(30 * (n / physicians.len()) as i64);
        let id = ConsultationId::new();
        let command = ConsultationCommand::Request {
            id,
            patient_id: *patient,
            patient_exists: true,
            physician_id: physician,
            physician_exists: true,
            starts_at: StartsAt::parse(starts_at, now)?,
            duration: DurationMinutes::DEFAULT,
            reason: Some(Reason::parse("routine check-up")?),
        };
        demo.run::<Consultation>(Target::New(id.as_uuid()), command)
            .await?;
        consultations.push(id);
    }
    println!(
        "requested {} consultations for tomorrow from 09:00 UTC",
        consultations.len()
    );
    let deactivate = PatientCommand::Deactivate {
        reason: Some(Reason::parse("moved abroad")?),
    };
    demo.run::<Patient>(Target::Existing(patients[9].as_uuid()), deactivate)
        .await?;
    println!("deactivated patient {}", PATIENTS[9].0);
    // A running server's publisher lives in another process: wake it rather than let it find
    // the demo's events on its next poll.
    sqlx::query("select pg_notify($1, '')")
        .bind(eventstore::wakeup::CHANNEL)
        .execute(pipeline.store().pool())
        .await
        .context("Failed to notify the publisher")?;
    println!(
        "done: {} physicians, {} patients, {} consultations",
        physicians.len(),
        patients.len(),
        consultations.len()
    );
    settled(pipeline, tenant, &consultations, settle).await
}

/// Waits up to `settle` for the sagas to decide `consultations`, and says how they ended.
async fn settled(
    pipeline: &Pipeline,
    tenant: &str,
    consultations: &[ConsultationId],
    settle: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + settle;
    loop {
        let mut statuses = std::collections::BTreeMap::<&str, usize>::new();
        for id in consultations {
            let loaded = pipeline
                .aggregates()
                .current_in::<Consultation>(tenant, id.as_uuid())
                .await?;
            let status = loaded.state.data().map_or("unknown", |c| c.status.as_str());
            *statuses.entry(status).or_default() += 1;
        }
        let waiting = statuses
            .get(Status::Requested.as_str())
            .copied()
            .unwrap_or(0);
        if waiting == 0 || tokio::time::Instant::now() >= deadline {
            let summary: Vec<String> = statuses.iter().map(|(s, n)| format!("{n} {s}")).collect();
            println!("consultations: {}", summary.join(", "));
            if waiting > 0 {
                println!(
                    "{waiting} still requested: the sagas run in `hap serve` (roles saga and timer)"
                );
            } else {
                println!("try GET /consultations?status=scheduled");
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
