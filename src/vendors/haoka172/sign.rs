//! 172号卡 signatures. Two unrelated schemes share one API secret:
//! - `user_sign` on our outbound requests: MD5 over sorted `k=v` pairs with
//!   the secret appended (docs/vendors.md#172号卡-request-signing-user_sign);
//! - `sign` on the vendor's callbacks: Base64 of AES-256-CBC over an order
//!   number, key = the secret's bytes NUL-padded to 32, fixed IV
//!   (docs/vendors.md#172号卡-callback-signature).
//!
//! Never log a secret, a key or a signature from here.

use aes::cipher::{block_padding::Pkcs7, BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD_INDIFFERENT};
use base64::Engine;
use md5::{Digest, Md5};

use crate::rules::status::SignedOver;

type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;
type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;

/// The fixed IV the vendor uses for callback signatures.
pub const CALLBACK_IV: &[u8; 16] = b"MengLong172HaoKa";

/// Lowercase hex MD5.
pub fn md5_hex(input: &[u8]) -> String {
    let digest = Md5::digest(input);
    let mut out = String::with_capacity(32);
    for b in digest.iter() {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 0x0f)]));
    }
    out
}

/// `user_sign` for an outbound request: fields sorted by name
/// (case-insensitive), joined `k=v` with `&`, the secret appended directly.
/// Empty values are signed too.
pub fn user_sign(params: &[(&str, &str)], secret: &str) -> String {
    let mut sorted = params.to_vec();
    sorted.sort_by_key(|(k, _)| k.to_ascii_lowercase());
    let mut plain = String::new();
    for (i, (k, v)) in sorted.iter().enumerate() {
        if i > 0 {
            plain.push('&');
        }
        plain.push_str(k);
        plain.push('=');
        plain.push_str(v);
    }
    plain.push_str(secret);
    md5_hex(plain.as_bytes())
}

/// The AES key derived from an API secret (PHP `openssl_decrypt` semantics:
/// raw bytes, NUL-padded or truncated to 32).
#[derive(Clone)]
pub struct CallbackKey([u8; 32]);

impl std::fmt::Debug for CallbackKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallbackKey([redacted])")
    }
}

impl CallbackKey {
    pub fn from_secret(secret: &str) -> Self {
        let mut key = [0u8; 32];
        let bytes = secret.as_bytes();
        let n = bytes.len().min(32);
        key[..n].copy_from_slice(&bytes[..n]);
        CallbackKey(key)
    }

    /// Sign a plaintext the way the vendor does (used by the simulator and
    /// tests; the service itself only verifies).
    pub fn encrypt(&self, plaintext: &str) -> String {
        let ct = Aes256CbcEnc::new(&self.0.into(), &(*CALLBACK_IV).into())
            .encrypt_padded_vec::<Pkcs7>(plaintext.as_bytes());
        STANDARD.encode(ct)
    }

    /// Decrypt a signature to its plaintext, trimmed of whitespace and NULs.
    pub fn decrypt(&self, sign: &str) -> Result<String, SignError> {
        let ct = decode_lenient(sign)?;
        if ct.is_empty() || ct.len() % 16 != 0 {
            return Err(SignError::BadLength(ct.len()));
        }
        let pt = Aes256CbcDec::new(&self.0.into(), &(*CALLBACK_IV).into())
            .decrypt_padded_vec::<Pkcs7>(&ct)
            .map_err(|_| SignError::Padding)?;
        let text = String::from_utf8_lossy(&pt);
        Ok(text
            .trim_matches(|c: char| c.is_whitespace() || c == '\0')
            .to_owned())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("sign missing")]
    Missing,
    #[error("sign is not valid Base64")]
    NotBase64,
    #[error("sign has {0} bytes, not a whole number of AES blocks")]
    BadLength(usize),
    #[error("sign does not decrypt with our key (bad padding)")]
    Padding,
    #[error("sign does not match OrderNo or OrderNo172")]
    Mismatch,
}

/// Verify a callback signature against every configured key (several during
/// a secret rotation): which of the two order numbers it decrypts to.
///
/// A match on `order_no_172` proves only that the sender holds a sign for
/// that number; the caller must corroborate it (`status::corroborate`).
/// Every key is tried whatever the first gives, so how long this takes says
/// nothing about why it failed; the `SignError` is for the inbox row and the
/// log only, never for the sender.
pub fn verify_callback(
    keys: &[CallbackKey],
    sign: Option<&str>,
    order_no: &str,
    order_no_172: Option<&str>,
) -> Result<SignedOver, SignError> {
    let sign = sign
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(SignError::Missing)?;
    let mut best = None;
    let mut decrypted = false;
    let mut first_error = None;
    for key in keys {
        let plain = match key.decrypt(sign) {
            Ok(p) => p,
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
        decrypted = true;
        // Padding success is not authentication: compare with the numbers.
        let by_order_no = !order_no.is_empty() && ct_eq(plain.as_bytes(), order_no.as_bytes());
        let by_172 = order_no_172
            .filter(|n| !n.is_empty())
            .is_some_and(|n| ct_eq(plain.as_bytes(), n.as_bytes()));
        if by_order_no {
            best = Some(SignedOver::OrderId);
        } else if by_172 && best.is_none() {
            best = Some(SignedOver::VendorOrderNo);
        }
    }
    match (best, first_error) {
        (Some(m), _) => Ok(m),
        (None, Some(e)) if !decrypted => Err(e),
        _ => Err(SignError::Mismatch),
    }
}

/// Base64 as senders actually produce it: surrounding whitespace, a `+` that
/// became a space in a form, missing padding, or the URL-safe alphabet.
fn decode_lenient(sign: &str) -> Result<Vec<u8>, SignError> {
    let cleaned: String = sign
        .trim()
        .chars()
        .filter(|c| *c != '\n' && *c != '\r' && *c != '\t')
        .map(|c| match c {
            ' ' | '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    STANDARD_NO_PAD_INDIFFERENT
        .decode(cleaned.trim_end_matches('='))
        .map_err(|_| SignError::NotBase64)
}

/// Compare without an early exit on the first differing byte.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn user_sign_matches_the_vendors_md_vector() {
        let sign = user_sign(
            &[
                ("user_id", "demo"),
                ("DownOrderID", "TEST001"),
                ("Timestamp", "1700000000"),
            ],
            SECRET,
        );
        assert_eq!(sign, "b3c5eacc4e6fdb866ebc6893bc17cd2b");
    }

    #[test]
    fn user_sign_signs_empty_values_and_sorts_case_insensitively() {
        // b < P < u regardless of case.
        let a = user_sign(&[("user_id", "u"), ("ProductID", ""), ("b", "1")], "s");
        assert_eq!(a, md5_hex(b"b=1&ProductID=&user_id=us"));
    }

    #[test]
    fn synthetic_vectors_decrypt_to_their_plaintexts() {
        let key = CallbackKey::from_secret(SECRET);
        assert_eq!(
            key.decrypt("1xdJ6RqsV/yikhtfNiDfgA==").unwrap(),
            "DOWN20240101001"
        );
        assert_eq!(
            key.decrypt("g7irqooKAx/5Ot8iTthYUaGld3I8G6ZpmzSHTPectTA=")
                .unwrap(),
            "mlkj230412165954TEST"
        );
    }

    #[test]
    fn encrypt_reproduces_the_vendor_vectors() {
        let key = CallbackKey::from_secret(SECRET);
        assert_eq!(key.encrypt("DOWN20240101001"), "1xdJ6RqsV/yikhtfNiDfgA==");
    }

    #[test]
    fn verify_accepts_either_order_number_and_says_which() {
        let keys = [CallbackKey::from_secret(SECRET)];
        let by_down = verify_callback(
            &keys,
            Some("1xdJ6RqsV/yikhtfNiDfgA=="),
            "DOWN20240101001",
            Some("mlkj230412165954TEST"),
        );
        assert_eq!(by_down, Ok(SignedOver::OrderId));
        let by_172 = verify_callback(
            &keys,
            Some("g7irqooKAx/5Ot8iTthYUaGld3I8G6ZpmzSHTPectTA="),
            "DOWN20240101001",
            Some("mlkj230412165954TEST"),
        );
        assert_eq!(by_172, Ok(SignedOver::VendorOrderNo));
    }

    #[test]
    fn verify_is_lenient_about_base64_spelling() {
        let keys = [CallbackKey::from_secret(SECRET)];
        let sign = "g7irqooKAx/5Ot8iTthYUaGld3I8G6ZpmzSHTPectTA=";
        for variant in [
            format!("  {sign}\n"),
            sign.trim_end_matches('=').to_owned(),
            sign.replace('/', "_"),
            // "1xdJ6RqsV/yikhtfNiDfgA==" has no '+'; build one that does.
        ] {
            assert_eq!(
                verify_callback(&keys, Some(&variant), "x", Some("mlkj230412165954TEST")),
                Ok(SignedOver::VendorOrderNo),
                "{variant:?}"
            );
        }
        // A '+' turned into a space by form decoding.
        let mut found = None;
        for i in 0..500 {
            let plain = format!("DOWN{i:06}");
            let s = keys[0].encrypt(&plain);
            if s.contains('+') {
                found = Some((plain, s));
                break;
            }
        }
        let (plain, s) = found.expect("some signature contains a '+'");
        assert_eq!(
            verify_callback(&keys, Some(&s.replace('+', " ")), &plain, None),
            Ok(SignedOver::OrderId)
        );
    }

    #[test]
    fn verify_rejects_wrong_key_missing_and_garbage_without_panicking() {
        let right = [CallbackKey::from_secret(SECRET)];
        let wrong = [CallbackKey::from_secret("ffffffffffffffffffffffffffffffff")];
        let sign = Some("1xdJ6RqsV/yikhtfNiDfgA==");
        assert!(verify_callback(&wrong, sign, "DOWN20240101001", None).is_err());
        assert_eq!(
            verify_callback(&right, None, "DOWN20240101001", None),
            Err(SignError::Missing)
        );
        assert_eq!(
            verify_callback(&right, Some("  "), "D", None),
            Err(SignError::Missing)
        );
        assert_eq!(
            verify_callback(&right, Some("***"), "D", None),
            Err(SignError::NotBase64)
        );
        assert_eq!(
            verify_callback(&right, Some("AAAA"), "D", None),
            Err(SignError::BadLength(3))
        );
        assert_eq!(
            verify_callback(&right, sign, "SOMEONE-ELSE", Some("mlkj1")),
            Err(SignError::Mismatch)
        );
    }

    #[test]
    fn any_of_several_keys_verifies_during_rotation() {
        let keys = [
            CallbackKey::from_secret("new-secret-new-secret-new-secret"),
            CallbackKey::from_secret(SECRET),
        ];
        assert_eq!(
            verify_callback(
                &keys,
                Some("1xdJ6RqsV/yikhtfNiDfgA=="),
                "DOWN20240101001",
                None
            ),
            Ok(SignedOver::OrderId)
        );
    }

    #[test]
    fn short_and_long_secrets_are_nul_padded_or_truncated() {
        let short = CallbackKey::from_secret("abc");
        assert_eq!(&short.0[..4], b"abc\0");
        let long = CallbackKey::from_secret(&format!("{SECRET}EXTRA"));
        assert_eq!(long.0, CallbackKey::from_secret(SECRET).0);
        assert_eq!(format!("{short:?}"), "CallbackKey([redacted])");
    }
}
