-- Scheduling's last step runs for each of a consultation's two confirmations (the patient
-- validated, the slot held) and confirms once it finds both stored, or gives the slot back if
-- the consultation failed; this partial index finds those three events of a consultation
-- without a scan of the whole store.
create index events_consultation_answers_idx
    on events (tenant_id, (payload ->> 'consultationId'))
    where event_type in ('PatientValidatedForConsultation', 'PhysicianAvailabilityConfirmed',
                         'ConsultationSchedulingFailed');
