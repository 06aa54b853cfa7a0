//! The master key (`HAP_DATA_KEY`, or the file `HAP_DATA_KEY_FILE`): 32 random bytes, base64.
//! HAP never stores it; it derives from it, with HKDF, one key per use, so that no key serves
//! two purposes.

use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// The master key's length, and every derived key's.
const KEY_LEN: usize = 32;
/// What each derived key is for; changing one makes every value derived with it another.
const CLAIMS: &[u8] = b"hap uniqueness claims v1";

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
        }
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
