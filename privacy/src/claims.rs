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

/// Replaces the clear personal values that claims of earlier releases hold by their keyed
/// hashes, so that a value registered before still conflicts with the same value now. Cheap
/// once done (one indexed scan finding nothing); safe to repeat and to run beside other
/// processes (each value is updated only while still clear). Answers how many it replaced.
pub async fn hash_clear_claims(pool: &PgPool, master: &MasterKey) -> Result<u64, sqlx::Error> {
    let clear: Vec<(String, String, String)> = sqlx::query_as(
        "select tenant_id, kind, value from unique_claims
          where kind = any($1) and value not like $2",
    )
    .bind(PERSONAL)
    .bind(format!("{TAG}%"))
    .fetch_all(pool)
    .await?;
    if clear.is_empty() {
        return Ok(0);
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
    let updated = sqlx::query(
        "update unique_claims c set value = h.hashed
           from unnest($1::text[], $2::text[], $3::text[], $4::text[])
                as h(tenant_id, kind, value, hashed)
          where c.tenant_id = h.tenant_id and c.kind = h.kind and c.value = h.value",
    )
    .bind(tenants)
    .bind(kinds)
    .bind(values)
    .bind(hashed)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(updated)
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
