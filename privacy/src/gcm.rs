//! AES-256-GCM with a random nonce, stored in front of the ciphertext: what wraps a subject's
//! key under the master key, and what seals a subject's fields under their key.
//!
//! A random 96-bit nonce is safe for far more messages than one key ever seals here (a
//! subject's handful of events; one wrap per subject).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand;

/// An AES-256-GCM key's length.
pub const KEY_LEN: usize = 32;

/// Sealed text that does not open: another key, other associated data, or altered bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sealed data does not open under this key")]
pub struct Unopenable;

/// An AES-256-GCM key.
pub struct Key(LessSafeKey);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    pub fn new(bytes: &[u8; KEY_LEN]) -> Self {
        let key = UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes make an AES-256 key");
        Self(LessSafeKey::new(key))
    }

    /// `plaintext` sealed with `aad` bound to it: nonce, then ciphertext and tag.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce).expect("the system's random source works");
        let mut sealed = Vec::with_capacity(NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(plaintext);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut sealed[NONCE_LEN..],
            )
            .expect("sealing a short text cannot fail");
        sealed.extend_from_slice(tag.as_ref());
        sealed
    }

    /// The plaintext of what [`Self::seal`] gave with the same `aad`, opened in the sealed
    /// bytes' own buffer: a bulk read opens hundreds of thousands, and copies add up.
    pub fn open(&self, aad: &[u8], mut sealed: Vec<u8>) -> Result<Vec<u8>, Unopenable> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(Unopenable);
        }
        let nonce =
            Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN]).map_err(|_| Unopenable)?;
        let length = self
            .0
            .open_within(nonce, Aad::from(aad), &mut sealed, NONCE_LEN..)
            .map_err(|_| Unopenable)?
            .len();
        sealed.truncate(length);
        Ok(sealed)
    }
}

/// A new random key's bytes.
pub fn random_key() -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    rand::fill(&mut key).expect("the system's random source works");
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_text_opens_only_with_its_key_and_aad() {
        let key = Key::new(&[1; KEY_LEN]);
        let sealed = key.seal(b"aad", b"secret");
        assert_eq!(key.open(b"aad", sealed.clone()).unwrap(), b"secret");
        assert_eq!(key.open(b"other", sealed.clone()), Err(Unopenable));
        assert_eq!(
            Key::new(&[2; KEY_LEN]).open(b"aad", sealed.clone()),
            Err(Unopenable)
        );
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(key.open(b"aad", altered), Err(Unopenable));
        assert_eq!(key.open(b"aad", sealed[..10].to_vec()), Err(Unopenable));
    }
}
