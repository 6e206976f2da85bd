//! Signing secrets and signatures in the Standard Webhooks form: a secret is `whsec_`
//! followed by the base64 of the key; a signature is `v1,` followed by the base64 of
//! HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}"), the timestamp in seconds.
//! Receivers check it with the Standard Webhooks libraries or a few lines of HMAC.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of every signing secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Bytes of a generated signing key (Standard Webhooks asks for 24 to 64).
pub const SECRET_KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("signing secret does not start with {SECRET_PREFIX}")]
    Prefix,
    #[error("signing secret is not base64 after {SECRET_PREFIX}")]
    Base64,
    #[error("no randomness for a signing secret: {0}")]
    Random(String),
}

/// A new random secret, `whsec_` + base64.
pub fn new_secret() -> Result<String, SignatureError> {
    let mut key = [0u8; SECRET_KEY_BYTES];
    getrandom::getrandom(&mut key).map_err(|e| SignatureError::Random(e.to_string()))?;
    Ok(format!("{SECRET_PREFIX}{}", STANDARD.encode(key)))
}

/// The HMAC key a secret stands for.
pub fn key_of(secret: &str) -> Result<Vec<u8>, SignatureError> {
    let b64 = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or(SignatureError::Prefix)?;
    STANDARD.decode(b64).map_err(|_| SignatureError::Base64)
}

/// The `webhook-signature` header value of a message.
pub fn sign(key: &[u8], webhook_id: &str, timestamp_s: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length: new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(webhook_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference libraries.
    #[test]
    fn matches_the_reference_signature() {
        let key = key_of("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_fresh_and_read_back() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_ne!(a, b);
        assert_eq!(key_of(&a).unwrap().len(), SECRET_KEY_BYTES);
        assert_eq!(key_of("nope"), Err(SignatureError::Prefix));
        assert_eq!(key_of("whsec_!!"), Err(SignatureError::Base64));
    }
}
