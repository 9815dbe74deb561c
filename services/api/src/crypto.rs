//! Graph secrets encryption, byte-compatible with Exosphere (spec §11).
//!
//! A stored secret is the URL-safe base64 (with `=` padding) of
//! `nonce (12 random bytes) ‖ AES-256-GCM ciphertext ‖ tag (16 bytes)`, with
//! no associated data; the plaintext is UTF-8. The key is the URL-safe base64
//! of exactly 32 bytes.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// URL-safe alphabet, padded output, padding optional on input.
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Length of the GCM tag.
const TAG_LEN: usize = 16;

/// Why a key or a ciphertext was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The key is not URL-safe base64 of 32 bytes.
    #[error("Key must be 32 raw bytes (256 bits)")]
    BadKey,
    /// The ciphertext is not URL-safe base64, is too short, or fails
    /// authentication.
    #[error("secret cannot be decrypted")]
    BadCiphertext,
    /// The random source failed.
    #[error("random source failed")]
    Random,
}

/// An AES-256-GCM key for graph secrets.
pub struct SecretCipher {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for SecretCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretCipher(<redacted>)")
    }
}

impl SecretCipher {
    /// Parses a URL-safe base64 key of 32 bytes.
    pub fn from_key(b64: &str) -> Result<Self, Error> {
        let bytes = URL_SAFE_LENIENT
            .decode(b64.trim())
            .map_err(|_| Error::BadKey)?;
        if bytes.len() != 32 {
            return Err(Error::BadKey);
        }
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| Error::BadKey)?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    /// Encrypts `plaintext` with a fresh random nonce.
    pub fn encrypt(&self, plaintext: &str) -> Result<String, Error> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| Error::Random)?;
        let mut sealed = plaintext.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut sealed,
            )
            .map_err(|_| Error::Random)?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(URL_SAFE_LENIENT.encode(out))
    }

    /// Decrypts a stored secret.
    pub fn decrypt(&self, ciphertext: &str) -> Result<String, Error> {
        let raw = URL_SAFE_LENIENT
            .decode(ciphertext.trim())
            .map_err(|_| Error::BadCiphertext)?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return Err(Error::BadCiphertext);
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::BadCiphertext)?;
        let mut buf = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut buf)
            .map_err(|_| Error::BadCiphertext)?;
        String::from_utf8(plain.to_vec()).map_err(|_| Error::BadCiphertext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published docker-compose key of Exosphere.
    const KEY: &str = "YTzpUlBGLSwm-3yKJRJTZnb0_aQuQQHyz64s8qAERVU=";

    #[test]
    fn round_trip_with_fresh_nonces() {
        let c = SecretCipher::from_key(KEY).unwrap();
        for p in ["hello", "", "ünïcødé 🔑", "a/b+c=d"] {
            let a = c.encrypt(p).unwrap();
            let b = c.encrypt(p).unwrap();
            assert_ne!(a, b, "nonces must differ");
            assert!(a.len() >= 32, "{a}");
            assert!(!a.contains('+') && !a.contains('/'), "{a}");
            assert_eq!(c.decrypt(&a).unwrap(), p);
        }
    }

    #[test]
    fn decrypts_ciphertexts_made_by_python_cryptography() {
        // Produced with `AESGCM(key).encrypt(nonce, pt, None)` and
        // `urlsafe_b64encode(nonce + ct)`, exactly as Exosphere does.
        let c = SecretCipher::from_key(KEY).unwrap();
        assert_eq!(
            c.decrypt("GBuDgjpKdE2Trn2yHznu2ngtNIOI5YIlsYKnTit60oUDXSbl4TVG")
                .unwrap(),
            "hello world"
        );
        assert_eq!(
            c.decrypt("jbH_pVBwKmnVKU12JV04wisS8xvNXEsFlYHEcQ==")
                .unwrap(),
            ""
        );
        assert_eq!(
            c.decrypt("5DFOLN8kkOb11jH8Q7wRh1HofZCbYWPpQd2cFMvWYdTpDwPMWiKZUdhfItg=")
                .unwrap(),
            "ünïcødé 🔑"
        );
    }

    #[test]
    fn rejects_bad_keys_and_ciphertexts() {
        assert_eq!(
            SecretCipher::from_key("c2hvcnQ=").unwrap_err(),
            Error::BadKey
        );
        assert_eq!(SecretCipher::from_key("!!!").unwrap_err(), Error::BadKey);
        let c = SecretCipher::from_key(KEY).unwrap();
        let mut ct = c.encrypt("x").unwrap().into_bytes();
        ct[20] = if ct[20] == b'A' { b'B' } else { b'A' };
        let ct = String::from_utf8(ct).unwrap();
        assert_eq!(c.decrypt(&ct).unwrap_err(), Error::BadCiphertext);
        assert_eq!(c.decrypt("short").unwrap_err(), Error::BadCiphertext);
    }
}
