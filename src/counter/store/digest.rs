//! What an idempotency key is stored as: a 16-byte digest of the counter it belongs to and the
//! key, a PostgreSQL `uuid` (fixed width, compared with memcmp, a narrower primary key than the
//! key's text, whatever its length). Pure; `commit` and `in_doubt` send the digests.

use sha2::{Digest, Sha256};

/// The first 16 bytes of SHA-256(`scope` || 0x00 || `key`), as a `uuid`. `scope` is the counter
/// the key belongs to: the empty string for `/api/v1/counter`, a named counter's name
/// otherwise. The 0x00 cannot occur in a scope (a name is `A-Za-z0-9-._~`) nor in a key
/// (visible ASCII), so no two (scope, key) pairs hash the same input. 128 bits: a collision among
/// 2^32 stored keys has a chance of about 2^-65.
pub fn key_digest(scope: &str, key: &str) -> uuid::Uuid {
    let hash = Sha256::new()
        .chain_update(scope.as_bytes())
        .chain_update([0u8])
        .chain_update(key.as_bytes())
        .finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&hash[..16]);
    uuid::Uuid::from_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_digest_is_the_first_16_bytes_of_sha256_of_scope_nul_key() {
        // printf '\0order-42' | sha256sum | cut -c1-32
        // In SQL: encode(substr(sha256('\x00'::bytea || 'order-42'::bytea), 1, 16), 'hex')::uuid
        assert_eq!(
            key_digest("", "order-42").to_string(),
            "d30a1e70-c64c-1df9-989f-9a0ffa18fd8e"
        );
        assert_ne!(key_digest("", "a"), key_digest("a", ""));
        assert_ne!(key_digest("n", "order-42"), key_digest("", "order-42"));
    }
}
