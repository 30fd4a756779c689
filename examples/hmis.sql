-- The reference HMIS: a small surveillance database of the kind a Ministry
-- of Health runs next to Go.Data. District codes match the admin-area codes
-- that `godata-bridge sim` carries in its locations' identifiers[].code.
-- Idempotent: safe to run twice.

CREATE SCHEMA IF NOT EXISTS hmis;

CREATE TABLE IF NOT EXISTS hmis.cases (
    case_id            text PRIMARY KEY,
    first_name         text NOT NULL,
    middle_name        text,
    last_name          text,
    sex                char(1) CHECK (sex IN ('M', 'F', 'U')),
    birth_date         date,
    age_years          int CHECK (age_years BETWEEN 0 AND 130),
    phone              text,
    email              text,
    address_line       text,
    city               text,
    district_code      text,
    lat                double precision,
    lng                double precision,
    national_id        text,
    occupation         text CHECK (occupation IN ('health_worker', 'farmer', 'teacher', 'student', 'other')),
    pregnant           boolean,
    onset_date         date,
    reported_at        timestamptz NOT NULL,
    classification     text NOT NULL CHECK (classification IN ('suspected', 'probable', 'confirmed', 'discarded')),
    outcome            text CHECK (outcome IN ('alive', 'recovered', 'deceased')),
    outcome_date       date,
    risk_level         text CHECK (risk_level IN ('low', 'medium', 'high')),
    hospitalized_from  date,
    hospitalized_to    date,
    notes              text,          -- internal; never sent to Go.Data
    updated_at         timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS hmis.contacts (
    contact_id     text PRIMARY KEY,
    case_id        text NOT NULL REFERENCES hmis.cases (case_id),
    first_name     text NOT NULL,
    last_name      text,
    sex            char(1) CHECK (sex IN ('M', 'F', 'U')),
    birth_date     date,
    phone          text,
    address_line   text,
    city           text,
    district_code  text,
    exposure_date  date,
    relation       text CHECK (relation IN ('family', 'friend', 'coworker', 'neighbour', 'healthcare', 'other')),
    certainty      text CHECK (certainty IN ('low', 'medium', 'high')),
    updated_at     timestamptz DEFAULT now()
);

-- updated_at follows every change (the bridge's "newest wins" reads it).
CREATE OR REPLACE FUNCTION hmis.touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS touch_updated_at ON hmis.cases;
CREATE TRIGGER touch_updated_at BEFORE UPDATE ON hmis.cases FOR EACH ROW EXECUTE FUNCTION hmis.touch_updated_at();
DROP TRIGGER IF EXISTS touch_updated_at ON hmis.contacts;
CREATE TRIGGER touch_updated_at BEFORE UPDATE ON hmis.contacts FOR EACH ROW EXECUTE FUNCTION hmis.touch_updated_at();

INSERT INTO hmis.cases (case_id, first_name, middle_name, last_name, sex, birth_date, age_years, phone, email,
                        address_line, city, district_code, lat, lng, national_id, occupation, pregnant,
                        onset_date, reported_at, classification, outcome, outcome_date, risk_level,
                        hospitalized_from, hospitalized_to, notes)
VALUES
  ('KEN-2024-0001', 'Aminata', NULL, 'Kamara', 'F', '1990-04-12', 34, '+23276123456', NULL,
   '12 Hangha Road', 'Kenema', 'SL-KE', 7.8767, -11.1875, 'SL-NID-1990-0412-77', 'health_worker', false,
   '2024-05-01', '2024-05-03 09:15:00+00', 'confirmed', 'recovered', '2024-05-28', 'high',
   '2024-05-04', '2024-05-20', 'referred by PHU Hangha'),
  ('KEN-2024-0002', 'Ibrahim', 'Sahr', 'Sesay', 'M', '2016-02-20', 8, NULL, NULL,
   '4 Dama Road', 'Kenema', 'SL-KE', NULL, NULL, NULL, 'student', NULL,
   '2024-05-05', '2024-05-06 14:02:00+00', 'probable', 'alive', NULL, 'medium',
   NULL, NULL, NULL),
  ('BO-2024-0001', 'Fatmata', NULL, 'Conteh', 'F', NULL, 61, '+23278555010', 'fconteh@example.org',
   '7 Bojon Street', 'Bo', 'SL-BO', 7.9647, -11.7383, 'SL-NID-1963-0101-12', 'farmer', NULL,
   '2024-05-07', '2024-05-08 08:40:00+00', 'suspected', NULL, NULL, 'low',
   NULL, NULL, NULL),
  ('KLH-2024-0001', 'Mohamed', NULL, 'Bangura', 'M', '1999-11-30', 24, '+23299100200', NULL,
   'Kpeyahun village', 'Kailahun', 'SL-KL', 8.2789, -10.5730, NULL, 'teacher', NULL,
   '2024-04-28', '2024-04-30 17:25:00+00', 'confirmed', 'deceased', '2024-05-09', 'high',
   '2024-05-01', '2024-05-09', 'burial team notified'),
  ('WAU-2024-0001', 'Isatu', 'Mariama', 'Jalloh', 'F', '1995-07-03', 28, '+23276990011', NULL,
   '22 Kissy Road', 'Freetown', 'SL-WU', 8.4657, -13.2317, NULL, 'other', true,
   '2024-05-10', '2024-05-11 11:00:00+00', 'suspected', 'alive', NULL, 'medium',
   NULL, NULL, NULL),
  ('WAU-2024-0002', 'Abu', NULL, 'Koroma', 'U', NULL, NULL, NULL, NULL,
   NULL, 'Freetown', 'SL-WU', NULL, NULL, NULL, NULL, NULL,
   NULL, '2024-05-12 07:30:00+00', 'discarded', NULL, NULL, NULL,
   NULL, NULL, 'lab negative twice')
ON CONFLICT (case_id) DO NOTHING;

INSERT INTO hmis.contacts (contact_id, case_id, first_name, last_name, sex, birth_date, phone, address_line, city,
                           district_code, exposure_date, relation, certainty)
VALUES
  ('KEN-2024-0001-C1', 'KEN-2024-0001', 'Sahr', 'Kamara', 'M', '1988-09-14', '+23276123457',
   '12 Hangha Road', 'Kenema', 'SL-KE', '2024-05-02', 'family', 'high'),
  ('KEN-2024-0001-C2', 'KEN-2024-0001', 'Hawa', 'Lahai', 'F', NULL, NULL,
   'Kenema Government Hospital', 'Kenema', 'SL-KE', '2024-05-03', 'healthcare', 'medium'),
  ('KEN-2024-0002-C1', 'KEN-2024-0002', 'Musu', 'Sesay', 'F', '1985-03-02', '+23277000111',
   '4 Dama Road', 'Kenema', 'SL-KE', '2024-05-05', 'family', 'high'),
  ('KLH-2024-0001-C1', 'KLH-2024-0001', 'Tamba', 'Fomba', 'M', NULL, NULL,
   'Kpeyahun village', 'Kailahun', 'SL-KL', '2024-04-29', 'neighbour', 'low'),
  ('WAU-2024-0001-C1', 'WAU-2024-0001', 'Kadiatu', 'Bah', 'F', '2001-12-24', NULL,
   '23 Kissy Road', 'Freetown', 'SL-WU', '2024-05-09', 'friend', 'medium')
ON CONFLICT (contact_id) DO NOTHING;

-- Write-back target (Go.Data → HMIS): the Go.Data toolkit demo's
-- FHIR-shaped table, extended. `identifier` is the HMIS case_id for cases
-- that came from the HMIS, else the Go.Data visualId (else its id).
CREATE TABLE IF NOT EXISTS hmis.tbl_cases (
    identifier           text PRIMARY KEY,
    externalid           text UNIQUE,          -- the Go.Data id
    name                 text,
    telecom              text,                 -- E.164 where it can be told
    address              text,
    active               boolean,
    birthdate            date,
    registrationdate     date,
    locationid           text,
    gender               text,                 -- FHIR code: male|female|other|unknown
    verification_status  text,
    clinical_status      text,
    deceased             boolean,
    godata_updated_at    timestamptz,
    fhir                 jsonb                 -- the FHIR R4 transaction Bundle
);

-- Lab results from the HMIS's laboratory (pushed to Go.Data under their
-- case or contact: `[[push]] resource = "lab_result"`).
CREATE TABLE IF NOT EXISTS hmis.lab_results (
    lab_id          text PRIMARY KEY,
    case_id         text REFERENCES hmis.cases (case_id),
    sample_id       text,
    sample_type     text,                 -- blood | swab | …
    test_type       text,                 -- rt_pcr | pcr | antigen | …
    result          text,                 -- positive | negative | inconclusive
    status          text,                 -- in_progress | completed
    taken_on        date,
    tested_on       date,
    result_on       timestamptz,
    lab_name        text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Lab results recorded in Go.Data, written back by the bridge
-- (`[[pull.target]] resource = "lab_result"`): one row per Go.Data lab
-- result, with its FHIR Observation and Specimen.
CREATE TABLE IF NOT EXISTS hmis.lab_results_godata (
    godata_id            text PRIMARY KEY,     -- the Go.Data lab result id
    person_godata_id     text,                 -- the case's or contact's Go.Data id
    person_type          text,                 -- case | contact
    sample_identifier    text,
    sample_type          text,
    test_type            text,
    result               text,                 -- positive | negative | inconclusive | …
    status               text,                 -- the Observation status (entered-in-error once deleted)
    sample_taken         date,
    tested               date,
    result_issued        timestamptz,
    godata_updated_at    timestamptz,
    observation          jsonb,                -- FHIR R4 Observation
    specimen             jsonb                 -- FHIR R4 Specimen
);
