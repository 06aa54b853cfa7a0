//! The master key (`HAP_DATA_KEY`, or the file `HAP_DATA_KEY_FILE`): 32 random bytes, base64.
//! HAP never stores it; it derives from it, with HKDF, one key per use, so that no key serves
//! two purposes.

use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use uuid::Uuid;

use crate::gcm::{self, KEY_LEN};

/// What each derived key is for; changing one makes every value derived with it another.
const CLAIMS: &[u8] = b"hap uniqueness claims v1";
const SUBJECT_KEYS: &[u8] = b"hap subject keys v1";
/// The master key of a development run without one (`--insecure-no-auth`): public, so the
/// personal data it protects is not protected at all.
const INSECURE_DEVELOPMENT: &[u8; KEY_LEN] = b"hap insecure development key!!!!";

#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error("the data key is not base64: {0}")]
    NotBase64(#[from] base64::DecodeError),
    #[error(
        "the data key has {0} bytes; it must have 32 (generate one with `openssl rand -base64 32`)"
    )]
    WrongLength(usize),
    #[error("a wrapped subject key does not open under this master key")]
    Unwrap,
}

/// The keys HAP derives from its master key.
pub struct MasterKey {
    claims: hmac::Key,
    /// Wraps each data subject's key for the store.
    subject_keys: gcm::Key,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// The master key given as base64 text (surrounding whitespace ignored, as a file has).
    pub fn from_base64(text: &str) -> Result<Self, MasterKeyError> {
        let bytes = STANDARD.decode(text.trim())?;
        if bytes.len() != KEY_LEN {
            return Err(MasterKeyError::WrongLength(bytes.len()));
        }
        Ok(Self::from_bytes(&bytes))
    }

    /// A fixed, public key for a development run without a data key (`--insecure-no-auth`):
    /// whoever reads the store reads the personal data in it.
    pub fn insecure_development() -> Self {
        Self::from_bytes(INSECURE_DEVELOPMENT)
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        let prk = Salt::new(HKDF_SHA256, &[]).extract(bytes);
        let derive = |info: &[u8]| {
            let mut key = [0u8; KEY_LEN];
            let infos = [info];
            prk.expand(&infos, HKDF_SHA256)
                .and_then(|okm| okm.fill(&mut key))
                .map(|()| key)
                .expect("HKDF-SHA256 gives 32 bytes")
        };
        Self {
            claims: hmac::Key::new(hmac::HMAC_SHA256, &derive(CLAIMS)),
            subject_keys: gcm::Key::new(&derive(SUBJECT_KEYS)),
        }
    }

    /// `key`, the key of data subject `subject`, as the store keeps it: sealed, and bound to
    /// the subject (a wrapped key copied onto another subject's row does not open).
    pub fn wrap_key(&self, subject: Uuid, key: &[u8; KEY_LEN]) -> Vec<u8> {
        self.subject_keys.seal(subject.as_bytes(), key)
    }

    /// The key of `subject` that [`Self::wrap_key`] wrapped.
    pub fn unwrap_key(
        &self,
        subject: Uuid,
        wrapped: &[u8],
    ) -> Result<[u8; KEY_LEN], MasterKeyError> {
        let key = self
            .subject_keys
            .open(subject.as_bytes(), wrapped.to_vec())
            .map_err(|_| MasterKeyError::Unwrap)?;
        key.try_into().map_err(|_| MasterKeyError::Unwrap)
    }

    /// What a uniqueness claim keeps of `value` of `kind`: a keyed hash (HMAC-SHA256, hex), the
    /// same for the same value under the same master key, and nothing anyone without the key
    /// can test a guess against.
    pub fn claim(&self, kind: &str, value: &str) -> String {
        let mut context = hmac::Context::with_key(&self.claims);
        context.update(kind.as_bytes());
        context.update(&[0]);
        context.update(value.as_bytes());
        context
            .sign()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(byte: u8) -> MasterKey {
        MasterKey::from_base64(&STANDARD.encode([byte; KEY_LEN])).unwrap()
    }

    #[test]
    fn a_claim_hides_its_value_and_is_stable() {
        let claim = master(7).claim("patient.documentNumber", "123.456.789-00");
        assert_eq!(
            claim,
            master(7).claim("patient.documentNumber", "123.456.789-00")
        );
        assert_ne!(
            claim,
            master(8).claim("patient.documentNumber", "123.456.789-00")
        );
        assert_ne!(
            claim,
            master(7).claim("physician.licenseNumber", "123.456.789-00")
        );
        assert!(!claim.contains("123"));
        assert_eq!(claim.len(), 64);
    }

    #[test]
    fn a_subject_key_unwraps_only_for_its_subject_under_its_master_key() {
        let (subject, other) = (Uuid::new_v4(), Uuid::new_v4());
        let key = gcm::random_key();
        let wrapped = master(7).wrap_key(subject, &key);
        assert_eq!(master(7).unwrap_key(subject, &wrapped).unwrap(), key);
        assert!(matches!(
            master(7).unwrap_key(other, &wrapped),
            Err(MasterKeyError::Unwrap)
        ));
        assert!(matches!(
            master(8).unwrap_key(subject, &wrapped),
            Err(MasterKeyError::Unwrap)
        ));
    }

    #[test]
    fn a_key_of_the_wrong_length_is_refused() {
        let short = STANDARD.encode([1u8; 16]);
        assert!(matches!(
            MasterKey::from_base64(&short),
            Err(MasterKeyError::WrongLength(16))
        ));
        assert!(matches!(
            MasterKey::from_base64("not base64!"),
            Err(MasterKeyError::NotBase64(_))
        ));
    }
}
