//! The simulator's own signing, written apart from the service's
//! `vendors::haoka172::sign` so a bug in one cannot hide in the other: both
//! are pinned to the docs/vendors.md vectors by their own tests.

use aes::cipher::{block_padding::Pkcs7, BlockModeEncrypt, KeyIvInit};
use base64::Engine;
use md5::{Digest, Md5};

/// Base64(AES-256-CBC(plaintext)), key = the secret's bytes NUL-padded to 32,
/// IV `MengLong172HaoKa`, PKCS#7: what the vendor puts in the `sign` header.
pub fn callback_sign(secret: &str, plaintext: &str) -> String {
    let mut key = [0u8; 32];
    for (k, b) in key.iter_mut().zip(secret.as_bytes()) {
        *k = *b;
    }
    let ct = cbc::Encryptor::<aes::Aes256>::new(&key.into(), b"MengLong172HaoKa".into())
        .encrypt_padded_vec::<Pkcs7>(plaintext.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ct)
}

/// What `user_sign` must be for a GetOrderInfo request (docs/vendors.md#172号卡-request-signing-user_sign,
/// literally: the three fields in their fixed order, the secret appended).
pub fn expected_user_sign(
    down_order_id: &str,
    timestamp: &str,
    user_id: &str,
    secret: &str,
) -> String {
    let plain =
        format!("DownOrderID={down_order_id}&Timestamp={timestamp}&user_id={user_id}{secret}");
    Md5::digest(plain.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn callback_signs_match_the_vendors_md_vectors() {
        assert_eq!(
            callback_sign(SECRET, "DOWN20240101001"),
            "1xdJ6RqsV/yikhtfNiDfgA=="
        );
        assert_eq!(
            callback_sign(SECRET, "mlkj230412165954TEST"),
            "g7irqooKAx/5Ot8iTthYUaGld3I8G6ZpmzSHTPectTA="
        );
    }

    #[test]
    fn user_sign_matches_the_vendors_md_vector() {
        assert_eq!(
            expected_user_sign("TEST001", "1700000000", "demo", SECRET),
            "b3c5eacc4e6fdb866ebc6893bc17cd2b"
        );
    }
}
