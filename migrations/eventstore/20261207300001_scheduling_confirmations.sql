-- Scheduling's last step runs for either confirmation of a consultation (the patient
-- validated, the slot held) and confirms once it finds both stored; this partial index finds
-- a consultation's confirmations without a scan of the whole store.
create index events_consultation_confirmations_idx
    on events (tenant_id, (payload ->> 'consultationId'))
    where event_type in ('PatientValidatedForConsultation', 'PhysicianAvailabilityConfirmed');
