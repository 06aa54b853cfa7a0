-- An erased patient or physician keeps their row (status 'erased'), with every personal
-- column null; their records keep their rows, with no content.
alter table patients alter column name drop not null,
                     alter column birth_date drop not null,
                     alter column document_number drop not null;
alter table physicians alter column name drop not null,
                       alter column license_number drop not null;
alter table people alter column name drop not null;
alter table records alter column content drop not null;
