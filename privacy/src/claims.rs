//! Uniqueness claims of personal values (document and license numbers): the store keeps a
//! keyed hash of the value ([`MasterKey::claim`]), tagged so that it is told from a clear value
//! that stores of earlier releases hold.

use sqlx::PgPool;

use crate::master::MasterKey;

/// The claim kinds whose values are personal data.
pub const PERSONAL: &[&str] = &["patient.documentNumber", "physician.licenseNumber"];

/// What every hashed claim value starts with.
const TAG: &str = "hmac-sha256:";

/// What a claim of `kind` keeps of `value`: a tagged keyed hash for a personal kind, the value
/// itself otherwise (a record's id, a lookup and nobody's data).
pub fn stored_value(master: &MasterKey, kind: &str, value: &str) -> String {
    if PERSONAL.contains(&kind) {
        format!("{TAG}{}", master.claim(kind, value))
    } else {
        value.to_owned()
    }
}

/// What [`hash_clear_claims`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Hashed {
    /// Clear values replaced by their hashes.
    pub replaced: u64,
    /// The streams owning a clear value whose hash another stream had claimed already: an
    /// earlier release's process claimed it in clear beside this one. Left clear (replacing it
    /// would break the claims' key), for an operator to resolve.
    pub duplicates: Vec<String>,
}

/// Replaces the clear personal values that claims of earlier releases hold by their keyed
/// hashes, so that a value registered before still conflicts with the same value now. Cheap
/// once done (one indexed scan finding nothing); safe to repeat and to run beside other
/// processes (each value is updated only while still clear, and never onto a hash already
/// claimed).
pub async fn hash_clear_claims(pool: &PgPool, master: &MasterKey) -> Result<Hashed, sqlx::Error> {
    let clear: Vec<(String, String, String)> = sqlx::query_as(
        "select tenant_id, kind, value from unique_claims
          where kind = any($1) and value not like $2",
    )
    .bind(PERSONAL)
    .bind(format!("{TAG}%"))
    .fetch_all(pool)
    .await?;
    if clear.is_empty() {
        return Ok(Hashed::default());
    }
    let hashed: Vec<String> = clear
        .iter()
        .map(|(_, kind, value)| stored_value(master, kind, value))
        .collect();
    let (tenants, kinds, values): (Vec<_>, Vec<_>, Vec<_>) = clear.into_iter().fold(
        (vec![], vec![], vec![]),
        |(mut t, mut k, mut v), (tenant, kind, value)| {
            t.push(tenant);
            k.push(kind);
            v.push(value);
            (t, k, v)
        },
    );
    let rows: Vec<(bool, String)> = sqlx::query_as(
        "with h as (select * from unnest($1::text[], $2::text[], $3::text[], $4::text[])
                              as h(tenant_id, kind, value, hashed)),
              taken as (select h.* from h
                          join unique_claims d on d.tenant_id = h.tenant_id
                                               and d.kind = h.kind and d.value = h.hashed),
              replaced as (update unique_claims c set value = h.hashed from h
                            where c.tenant_id = h.tenant_id and c.kind = h.kind
                              and c.value = h.value
                              and not exists (select 1 from taken t
                                               where t.tenant_id = h.tenant_id
                                                 and t.kind = h.kind and t.value = h.value)
                           returning c.owner_id)
         select true, owner_id::text from replaced
         union all
         select false, c.owner_id::text from taken t
           join unique_claims c on c.tenant_id = t.tenant_id and c.kind = t.kind
                                and c.value = t.value",
    )
    .bind(tenants)
    .bind(kinds)
    .bind(values)
    .bind(hashed)
    .fetch_all(pool)
    .await?;
    let replaced = rows.iter().filter(|(replaced, _)| *replaced).count() as u64;
    let duplicates = rows
        .into_iter()
        .filter(|(replaced, _)| !replaced)
        .map(|(_, owner)| owner)
        .collect();
    Ok(Hashed {
        replaced,
        duplicates,
    })
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    #[test]
    fn personal_claims_are_hashed_and_lookups_are_not() {
        let master = MasterKey::from_base64(&STANDARD.encode([3u8; 32])).unwrap();
        let document = stored_value(&master, "patient.documentNumber", "123");
        assert!(document.starts_with(TAG) && !document.contains("123"));
        assert_eq!(stored_value(&master, "record", "0193-ab"), "0193-ab");
    }
}
